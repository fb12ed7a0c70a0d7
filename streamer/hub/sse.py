"""One SSE subscriber of the hub on asyncio/aiohttp: its bounded frame queue, and the pump that
writes queued frames to its HTTP response."""

from __future__ import annotations

import asyncio

from aiohttp import web

from streamer.hub.messages import HEARTBEAT_FRAME
from streamer.hub.metrics import Metrics

# Writes to one slow subscriber are coalesced up to this many queued frames per syscall.
MAX_FRAMES_PER_WRITE = 64
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # proxies must not buffer the stream
}


class Subscriber:
    """One SSE connection: a bounded queue of encoded frames (a registry Sink)."""

    __slots__ = ("queue", "client", "request", "dropped")

    def __init__(self, size: int, client: str, request: web.Request) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.client = client
        self.request = request
        self.dropped = False

    def offer(self, frame: bytes) -> bool:
        """Queue a frame; False if the queue is full (the client does not keep up)."""
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            return False
        return True

    def end(self) -> None:
        """Make the writer finish: pending frames are discarded, then the stream ends."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    def cut_off(self) -> None:
        """End the stream now, even if its writer is stuck on a socket that does not drain."""
        self.dropped = True
        self.end()
        transport = self.request.transport
        if transport is not None:
            transport.abort()


async def pump(subscriber: Subscriber, response: web.StreamResponse, metrics: Metrics) -> None:
    """Write the subscriber's frames to `response` until its stream is ended."""
    queue = subscriber.queue
    while True:
        frame = await queue.get()
        frames: list[bytes] = []
        while frame is not None:
            frames.append(frame)
            if len(frames) >= MAX_FRAMES_PER_WRITE or queue.empty():
                break
            frame = queue.get_nowait()
        if frames:
            await response.write(b"".join(frames))
            messages = [f for f in frames if f is not HEARTBEAT_FRAME]
            metrics.messages_delivered += len(messages)
            metrics.bytes_delivered += sum(map(len, messages))
        if frame is None:
            return
