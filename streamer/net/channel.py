"""MessageChannel: an ordered, reliable, message-preserving pipe to one peer, with backpressure.

Defines the interface every transport implements (the aiortc data channel in rtc.py, the in-memory
pair here for tests), and CreditedChannel, the one asyncio driver of the flow control rules of
streamer.core.credit (window credits, keepalive, idle timeout) that every transport runs on.
It never interprets the bytes it carries.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
from dataclasses import dataclass

from streamer.core.credit import (
    DEFAULT_WINDOW,
    IDLE_TIMEOUT_S,
    KEEPALIVE_S,
    MESSAGE_OVERHEAD,
    CreditWindow,
    message_cost,
)
from streamer.core.errors import ChannelClosed, MessageTooLarge

__all__ = [
    "DEFAULT_WINDOW",
    "IDLE_TIMEOUT_S",
    "KEEPALIVE_S",
    "MAX_MESSAGE_SIZE",
    "MESSAGE_OVERHEAD",
    "ChannelStats",
    "CreditedChannel",
    "MemoryChannel",
    "MessageChannel",
    "memory_channel_pair",
    "message_cost",
]

log = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = 64 * 1024  # browsers cap data-channel messages; wire.Framer splits above this


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


class CreditedChannel(MessageChannel):
    """A MessageChannel whose flow control is a CreditWindow: send() waits for credit (and for
    the transport, see _transport_busy), recv() grants credit back, a timer sends keepalives and
    closes a silent channel. A transport supplies _transmit() and calls _deliver() with every
    message that arrives (bytes: the caller's, str: control) and _mark_closed() when it ends."""

    def __init__(
        self,
        peer_id: str,
        *,
        window: int = DEFAULT_WINDOW,
        keepalive: float = KEEPALIVE_S,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        super().__init__(peer_id)
        self._loop = asyncio.get_running_loop()
        self._flow = CreditWindow(
            self._loop.time(),
            window=window,
            keepalive=keepalive,
            idle_timeout=idle_timeout,
            largest_message=self.max_message_size,
        )
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: closed, after the rest
        self._queued_bytes = 0  # payload bytes in _queue, not yet taken by recv()
        self._writable = asyncio.Event()
        self._closed = False
        self._closed_event = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._schedule_timer()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- what a transport provides -------------------------------------------------------------

    @abc.abstractmethod
    def _transmit(self, data: bytes | str) -> None:
        """Hand one message to the transport; ChannelClosed (after _mark_closed) if it cannot."""

    def _transport_busy(self) -> bool:
        """True while the transport holds so much that send() should wait for _writable."""
        return False

    # -- the flow control driver ---------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        self._check_send(data)
        size = len(data)
        flow = self._flow
        if not flow.may_send(size) or self._transport_busy():
            self.stats.send_waits += 1
            while not flow.may_send(size) or self._transport_busy():
                self._writable.clear()
                await self._writable.wait()
                if self._closed:
                    raise ChannelClosed(f"channel to {self.peer_id} is closed")
        self._transmit(bytes(data))
        flow.sent(size, self._loop.time())
        self.stats.bytes_sent += size
        self.stats.messages_sent += 1

    async def recv(self) -> bytes:
        data = await self._queue.get()
        if data is None:
            self._queue.put_nowait(None)  # every later recv() ends the same way
            raise ChannelClosed(f"channel to {self.peer_id} is closed")
        size = len(data)
        self._queued_bytes -= size
        self.stats.bytes_received += size
        self.stats.messages_received += 1
        grant = self._flow.consumed(size, self._loop.time())
        if grant is not None and not self._closed:
            self._send_control(grant)
        return data

    def _deliver(self, message: bytes | str) -> None:
        """One message from the peer, in order."""
        now = self._loop.time()
        if isinstance(message, bytes):
            problem = self._flow.received(len(message), now)
            if self._closed:
                return
            if problem is None:
                self._queued_bytes += len(message)
                self._queue.put_nowait(message)
                return
        else:
            problem = self._flow.control_received(message, now)
            if self._closed:
                return
            if problem is None:
                self._writable.set()  # a grant: a waiting send() may fit now
                return
        log.warning("peer %s: %s; dropping it", self.peer_id, problem)
        self._close_soon(problem)

    def _send_control(self, text: str) -> None:
        try:
            self._transmit(text)
        except ChannelClosed:
            pass

    def _schedule_timer(self) -> None:
        deadline = self._flow.deadline()
        if deadline != math.inf:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self._loop.time()
        control, problem = self._flow.tick(now)
        if problem is not None:
            log.info(
                "peer %s silent for %.0f s; closing", self.peer_id, now - self._flow.last_recv
            )
            self._close_soon(problem)
            return
        if control is not None:
            self._send_control(control)
        if not self._closed:
            self._schedule_timer()

    def _close_soon(self, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self.close(reason))

    def _mark_closed(self, reason: str) -> None:
        """The channel is closed from now on: wake everyone waiting, end recv() after the rest."""
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        self._closed_event.set()
        self._writable.set()
        self._queue.put_nowait(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def wait_closed(self) -> None:
        await self._closed_event.wait()


class MemoryChannel(CreditedChannel):
    """One end of an in-process pair (memory_channel_pair): messages go straight to the peer's
    end, under the same flow control as every other transport."""

    def __init__(
        self,
        peer_id: str,
        *,
        window: int = DEFAULT_WINDOW,
        keepalive: float = KEEPALIVE_S,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        super().__init__(peer_id, window=window, keepalive=keepalive, idle_timeout=idle_timeout)
        self._peer: MemoryChannel | None = None

    @property
    def buffered_amount(self) -> int:
        return self._peer._queued_bytes if self._peer is not None else 0

    def connect(self, peer: MemoryChannel) -> None:
        """Join this end to `peer` (and `peer` to this end)."""
        self._peer, peer._peer = peer, self

    def _transmit(self, data: bytes | str) -> None:
        if self._closed or self._peer is None:
            self._mark_closed("send failed: not connected")
            raise ChannelClosed(f"channel to {self.peer_id} is closed")
        self._peer._deliver(data)

    async def close(self, reason: str | None = None) -> None:
        self._mark_closed(reason or "closed locally")
        if self._peer is not None:
            self._peer._mark_closed("closed by peer")


def memory_channel_pair(
    ids: tuple[str, str] = ("a", "b"),
    *,
    window: int = DEFAULT_WINDOW,
    keepalive: float = KEEPALIVE_S,
    idle_timeout: float = IDLE_TIMEOUT_S,
) -> tuple[MemoryChannel, MemoryChannel]:
    """Two connected in-memory channels with the same flow control options. The first end's
    peer_id is ids[1] and the second's is ids[0]. Needs a running event loop."""
    a = MemoryChannel(ids[1], window=window, keepalive=keepalive, idle_timeout=idle_timeout)
    b = MemoryChannel(ids[0], window=window, keepalive=keepalive, idle_timeout=idle_timeout)
    a.connect(b)
    return a, b
