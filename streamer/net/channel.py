"""MessageChannel: an ordered, reliable, message-preserving pipe to one peer, with backpressure.

Defines the interface every transport implements (the aiortc data channel in rtc.py, the in-memory
pair here for tests and the simulator) and the credit rule that bounds what a receiver buffers.
It never interprets the bytes it carries.
"""

from __future__ import annotations

import abc
import asyncio
from collections import deque
from dataclasses import dataclass

from streamer.core.errors import ChannelClosed, MessageTooLarge

MAX_MESSAGE_SIZE = 64 * 1024  # browsers cap data-channel messages; wire.Framer splits above this
MESSAGE_OVERHEAD = 64  # credit charged per message on top of its length, so empty ones cost too
DEFAULT_WINDOW = 4 * 1024 * 1024  # bytes a receiver buffers per channel before its sender waits


def message_cost(size: int) -> int:
    """What one message of `size` bytes counts against a receive window (both ends agree)."""
    return size + MESSAGE_OVERHEAD




@dataclass(slots=True)
class ChannelStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    send_waits: int = 0  # how often send() had to wait for the peer or the transport to catch up


class MessageChannel(abc.ABC):
    """One peer. send() waits while the peer has not consumed enough; recv() returns whole messages
    in order and raises ChannelClosed once the channel is closed and drained; `async for` ends
    there instead."""

    max_message_size = MAX_MESSAGE_SIZE

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.is_writer = False  # set by the swarm once the peer proved it holds the writer key
        self.stats = ChannelStats()
        self.close_reason: str | None = None

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once either side closed the channel (queued messages may still be read)."""

    @property
    @abc.abstractmethod
    def buffered_amount(self) -> int:
        """Bytes sent but not yet taken by the transport or the peer."""

    @abc.abstractmethod
    async def send(self, data: bytes) -> None:
        """Queue one message; waits while the buffer is full. ChannelClosed, MessageTooLarge."""

    @abc.abstractmethod
    async def recv(self) -> bytes:
        """The next message; ChannelClosed once closed and drained."""

    @abc.abstractmethod
    async def close(self, reason: str | None = None) -> None:
        """Close both directions after what was already sent; idempotent."""

    @abc.abstractmethod
    async def wait_closed(self) -> None:
        """Return once the channel is closed (by either side)."""

    def _check_send(self, data: bytes) -> None:
        if self.closed:
            raise ChannelClosed(f"channel to {self.peer_id} is closed")
        if len(data) > self.max_message_size:
            raise MessageTooLarge(
                f"message of {len(data)} bytes exceeds {self.max_message_size}; frame it first"
            )

    def __aiter__(self) -> MessageChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ChannelClosed:
            raise StopAsyncIteration from None


class _Inbox:
    """Messages waiting for one endpoint, with their cost and a condition both ends wait on."""

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.messages: deque[bytes] = deque()
        self.cost = 0
        self.changed = asyncio.Event()

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class MemoryChannel(MessageChannel):
    """One end of an in-process pair. With a capacity, send() waits while the peer's inbox holds
    that much (a message larger than the capacity still goes through once the inbox is empty)."""

    def __init__(self, peer_id: str, inbox: _Inbox) -> None:
        super().__init__(peer_id)
        self._inbox = inbox
        self._peer: MemoryChannel | None = None
        self._closed = False
        self._closed_event = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered_amount(self) -> int:
        assert self._peer is not None
        return sum(len(m) for m in self._peer._inbox.messages)

    async def send(self, data: bytes) -> None:
        self._check_send(data)
        assert self._peer is not None
        inbox = self._peer._inbox
        cost = message_cost(len(data))

        def full() -> bool:
            return (
                inbox.capacity is not None
                and bool(inbox.messages)
                and inbox.cost + cost > inbox.capacity
            )

        if full():
            self.stats.send_waits += 1
        while full():
            await inbox.changed.wait()
            if self._closed:
                raise ChannelClosed(f"channel to {self.peer_id} is closed")
        inbox.messages.append(bytes(data))
        inbox.cost += cost
        self.stats.bytes_sent += len(data)
        self.stats.messages_sent += 1
        inbox.notify()

    async def recv(self) -> bytes:
        inbox = self._inbox
        while not inbox.messages:
            if self._closed:
                raise ChannelClosed(f"channel to {self.peer_id} is closed")
            await inbox.changed.wait()
        data = inbox.messages.popleft()
        inbox.cost -= message_cost(len(data))
        self.stats.bytes_received += len(data)
        self.stats.messages_received += 1
        inbox.notify()
        return data

    async def close(self, reason: str | None = None) -> None:
        self._mark_closed(reason or "closed locally")
        if self._peer is not None:
            self._peer._mark_closed("closed by peer")

    def _mark_closed(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        self._closed_event.set()
        self._inbox.notify()
        if self._peer is not None:
            self._peer._inbox.notify()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()


def memory_channel_pair(
    capacity: int | None = None, ids: tuple[str, str] = ("a", "b")
) -> tuple[MemoryChannel, MemoryChannel]:
    """Two connected in-memory channels; `capacity` bounds each inbox in message_cost bytes
    (None: unbounded). The first end's peer_id is ids[1] and the second's is ids[0]."""
    a = MemoryChannel(ids[1], _Inbox(capacity))
    b = MemoryChannel(ids[0], _Inbox(capacity))
    a._peer, b._peer = b, a
    return a, b
