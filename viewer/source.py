"""Where the local player server gets stream blocks: the BlockSource interface, and LocalFeedSource
over a Feed in this process (a broadcaster's own feed, an archive on disk).

A source only hands out blocks its feed holds, which are verified by construction; it never
parses media beyond the fixed segment header and never blocks the event loop on waiting.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from streamer.core.errors import BlockNotFoundError, StreamFormatError
from streamer.core.stats import NodeStats, ReplicationStats
from streamer.media.format import SegmentHeader, stream_ended
from streamer.net.aio import Deadline, FeedWakeup

if TYPE_CHECKING:
    from streamer.core.feed import Feed

STATS_KEYS = (
    "key",
    "length",
    "blocks_have",
    "byte_length",
    "peers",
    "bytes_up",
    "bytes_down",
    "live_delay_s",
    "share_from_peers",
    "down_rate",
    "up_rate",
    "ended",
)


class BlockSource(ABC):
    """The blocks of one stream feed as the player server sees them, wherever they come from."""

    @property
    @abstractmethod
    def length(self) -> int:
        """The signed length known so far (block 0 is the header)."""

    @property
    @abstractmethod
    def ended(self) -> bool:
        """True once the stream has ended (format.stream_ended)."""

    @abstractmethod
    def has(self, index: int) -> bool:
        """Whether block `index` is held locally (get() returns at once)."""

    @abstractmethod
    async def get(self, index: int, timeout: float | None = None) -> bytes:
        """Block `index`, waiting for it (a network source fetches it first, with priority).

        Raises TimeoutError when it does not arrive within `timeout` seconds.
        """

    @property
    def last_media(self) -> int:
        """The newest media block (the one before the end marker once the stream ended)."""
        return self.length - (2 if self.ended else 1)

    def holes(self) -> list[tuple[int, int]]:
        """Runs of blocks held by no one, each followed by a media block someone holds (a network
        source: core.scheduler.Replicator.holes); none for a feed that is all here."""
        return []

    def goes_on_at(self, index: int) -> int | None:
        """Where playback goes on if block `index` is held by no one: the first block after its
        hole; None if it may still come, or nothing follows."""
        for start, end in self.holes():
            if start <= index < end:
                return end
        return None

    @abstractmethod
    async def wait_for_change(self, timeout: float) -> bool:
        """Wait until the length grows or new blocks arrive; False when `timeout` passed first."""

    @abstractmethod
    def set_playhead(self, index: int) -> None:
        """Hint: the player is about to need blocks from `index` on."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters for the stats panel and /stats; has at least the keys in STATS_KEYS."""

    @abstractmethod
    async def close(self) -> None:
        """Release what the source holds; the server calls this when it stops."""


class LocalFeedSource(BlockSource):
    """A BlockSource over a Feed in this process, woken by the feed's listener callbacks.

    Waiting for a block that is not there yet means waiting for someone (a broadcaster in the
    same process, say) to append it; a network source extends this class and also asks the swarm
    for it (`_request`, `_can_fetch`). Reads of single blocks stay on the loop: they are one
    small pread from the page cache.
    """

    _can_fetch = False  # whether a missing block inside the signed length can still arrive
    POLL_S = 1.0  # re-check at least this often while waiting (ended may change without a block)

    def __init__(self, feed: Feed) -> None:
        self._feed = feed
        self._changes = FeedWakeup(feed)
        self._playhead = 0
        self.join_block: int | None = None  # where playback started (a network source sets it)
        self._ended = False
        self._newest_wall_clock: float | None = None
        self._newest_checked = -1

    @property
    def feed(self) -> Feed:
        return self._feed

    @property
    def length(self) -> int:
        return self._feed.length

    @property
    def ended(self) -> bool:
        self._refresh()
        return self._ended

    def has(self, index: int) -> bool:
        return 0 <= index < self._feed.length and self._feed.has(index)

    async def get(self, index: int, timeout: float | None = None) -> bytes:
        if index < 0:
            raise BlockNotFoundError(f"block {index} does not exist")
        deadline = Deadline(timeout)
        asked = False
        while not self.has(index):
            if self.ended and (index >= self._feed.length or not self._can_fetch):
                raise BlockNotFoundError(f"block {index} is past the end of the stream")
            if not asked:
                self._request(index)
                asked = True
            if deadline.expired():
                raise TimeoutError(f"block {index} did not arrive in time")
            await self.wait_for_change(deadline.capped(self.POLL_S))
        return self._feed.get(index)

    async def wait_for_change(self, timeout: float) -> bool:
        return await self._changes.wait(timeout)

    def set_playhead(self, index: int) -> None:
        self._playhead = max(0, index)

    def stats(self) -> dict[str, Any]:
        self._refresh()
        feed = self._feed
        delay = 0.0
        if self._newest_wall_clock is not None and not self._ended:
            delay = max(0.0, time.time() - self._newest_wall_clock)
        node = NodeStats(
            key=feed.key.hex(),
            length=feed.length,
            blocks_have=feed.blocks_present,
            byte_length=feed.byte_length,
            live_delay_s=round(delay, 3),
            ended=self._ended,
            swarm=self._swarm_stats(),
        )
        return {**node.as_json(), "playhead": self._playhead, "join_block": self.join_block}

    def _swarm_stats(self) -> ReplicationStats:
        """This node's replication (a network source's; none for a feed in this process)."""
        return ReplicationStats()

    async def close(self) -> None:
        self._changes.close()

    def _request(self, index: int) -> None:
        """Someone waits for block `index`: a network source asks the swarm for it first."""

    def _refresh(self) -> None:
        """Re-read the newest held segment's header (end flag, wall clock) when that changed."""
        feed = self._feed
        newest = feed.length - 1
        while newest >= 1 and not feed.has(newest) and newest > self._newest_checked:
            newest -= 1
        if newest < 1 or newest <= self._newest_checked:
            return
        self._newest_checked = newest
        try:
            header = SegmentHeader.decode(feed.get(newest))
        except StreamFormatError:
            return
        self._ended = stream_ended(feed.length, newest, header)
        self._newest_wall_clock = header.wall_clock
