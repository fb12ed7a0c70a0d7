"""Upload admission, sans-IO: whether a node answers a peer's block request now or says busy.

One policy object per feed, shared by all its sessions (a Session asks it before queueing an
answer and tells it when the answer starts or is dropped). A viewer keeps short queues for its
uplink, shorter for old blocks than for new ones; a writer serves each block `writer_copies` times
freely, avoids handing consecutive new blocks first to the same peers, and serves extra copies
only from a budget worth `writer_extra_ratio` of the stream's bytes, so its upload stays near one
copy of the stream however many viewers ask. The exception is a peer for which the writer is the
only neighbour (behind a NAT that lets it reach nobody else): it has no one to get a block from
but the writer, so the writer serves it every block it asks for (at most one copy per neighbour).
A copy counts only while the peer it went to stays: when a peer leaves, the new blocks the writer
gave it are owed again (it may have been a block's only holder, and then nobody else has it).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable
from typing import Protocol

from streamer.core.replication import FeedLike

__all__ = ["AdmissionLimits", "UploadAdmission", "blocks_of"]

REVEALED_MEMORY = 64  # newest blocks whose first-holder wait is remembered
# A writer refused a block it already served this many times: the swarm is short of that block.
DEMAND_REFUSALS = 3
COPY_MEMORY = 4096  # blocks behind the live edge for which a writer remembers copies served


class AdmissionLimits(Protocol):
    """The numbers the policy reads (core.scheduler.ReplicatorConfig has them all)."""

    max_queued_uploads: int
    max_queued_relays: int
    max_queued_history: int
    hot_window: float  # seconds of media
    writer_copies: int
    root_grace: float
    writer_extra_ratio: float
    writer_extra_burst: float  # seconds of the stream
    block_duration: float  # seconds of media per block


def blocks_of(seconds: float, block_duration: float) -> int:
    """Blocks that hold `seconds` of media when each holds `block_duration` (at least one): the
    policy's windows are seconds of media, whatever the block size."""
    return max(1, math.ceil(seconds / block_duration - 1e-9))


def _unknown(peer: Hashable) -> int | None:
    return None


class UploadAdmission:
    """Decides, for every session of one feed, which block requests are answered now.

    `neighbours_of(peer)` is how many neighbours `peer` last said it has (None: not known); the
    swarm's membership hears it (count reports), and a writer reads it to spot a peer that has
    no path but the writer."""

    def __init__(
        self,
        feed: FeedLike,
        limits: AdmissionLimits,
        neighbours_of: Callable[[Hashable], int | None] = _unknown,
    ) -> None:
        self.feed = feed
        self.limits = limits
        self.neighbours_of = neighbours_of
        self.refused = 0  # block requests declined as busy (or over the writer's budget)
        # A writer's answers admitted outside its free copy and extra budget, by why (so its stats
        # say why its upload grew): every answer to a peer that has no neighbour but us (never
        # counted as a copy), and a copy on credit for a block the swarm did not pass on (asked
        # for again and again after its copy went out).
        self.copies_alone = 0
        self.copies_demanded = 0
        self.waiting = 0  # admitted answers not yet being sent
        self._peers = 0
        self._copies: dict[int, int] = {}  # writer: block -> copies admitted
        self._given: dict[Hashable, dict[int, int]] = {}  # writer: peer -> new block -> copies
        self._denied: dict[int, int] = {}  # writer: block -> late refusals since its last copy
        self._served_at: dict[int, float] = {}  # writer: block -> when its last free copy went
        self._tokens = 0.0  # writer: bytes of extra copies it may still serve
        self._roots: deque[Hashable] = deque()  # writer: who got the newest blocks' first copies
        self._root_asked: dict[int, float] = {}  # writer: block -> when its last root asked
        self._seen_bytes = feed.byte_length
        self.over_budget_at: float | None = None  # writer: last refusal for lack of extra budget
        # Live pushes wait for our uplink (core.relay): new blocks are then refused to pullers.
        self.pushing: Callable[[], bool] = lambda: False
        # Whether a neighbour other than `peer` is known to hold `block` (the replicator reads
        # its sessions' announcements): a block only we hold near us is not refused for a full
        # queue (rarest first).
        self.held_elsewhere: Callable[[Hashable, int], bool] = lambda peer, block: True

    # ------------------------------------------------------------ told by the replicator

    def peer_added(self) -> None:
        self._peers += 1

    def peer_closed(self, peer: Hashable) -> None:
        self._peers -= 1
        if peer in self._roots:
            self._roots.remove(peer)
        # The copies of new blocks it took are owed again (answers still queued were dropped one
        # by one already). A block it was the only holder of would otherwise be refused to
        # everyone as served, until the extra budget happened to cover it.
        hot = self.feed.length - blocks_of(self.limits.hot_window, self.limits.block_duration)
        for block, n in self._given.pop(peer, {}).items():
            if block >= hot and self._copies.get(block, 0) > 0:
                self._copies[block] = max(0, self._copies[block] - n)

    def feed_grew(self) -> None:
        """Our own appends earn a writer its budget of extra copies."""
        feed = self.feed
        added = feed.byte_length - self._seen_bytes
        self._seen_bytes = feed.byte_length
        if feed.writable:
            limits = self.limits
            average = feed.byte_length / max(feed.length, 1)
            burst = blocks_of(limits.writer_extra_burst, limits.block_duration)
            self._tokens = min(self._tokens + limits.writer_extra_ratio * added, burst * average)

    def only_through_us(self, peer: Hashable) -> bool:
        """Whether `peer` said it has no neighbour but us (a count of 0 is an announcement made
        before it connected to us)."""
        count = self.neighbours_of(peer)
        return count is not None and count <= 1

    # ------------------------------------------------------------ asked by the sessions

    def admit(self, peer: Hashable, block: int, now: float) -> bool:
        """May `peer`'s request for `block` be answered now? False: the session answers busy."""
        limits, feed = self.limits, self.feed
        if feed.writable and self.only_through_us(peer):
            # Nobody else can pass blocks to it: held back, it would starve, not ask elsewhere.
            # (Its copies are not counted: it passes them on to nobody.)
            self.copies_alone += 1
        elif feed.writable:
            copies = self._copies.get(block, 0)
            if copies == 0 and peer in self._roots and self._peers > len(self._roots):
                # A peer that got one of the last new blocks first is busy passing it on: let
                # another neighbour be this block's first holder, unless none asks for a while.
                asked = self._root_asked.setdefault(block, now)
                if now - asked < limits.root_grace:
                    self.refused += 1
                    return False
            if copies >= limits.writer_copies:
                average = feed.byte_length / max(feed.length, 1)
                if self._tokens < average or self.waiting >= limits.max_queued_uploads:
                    # Asked again and again for a block it served, `root_grace` after the copy
                    # went out (not the burst of asks at its announcement): the swarm is not
                    # passing it on (its holders are slow, or busy with others). One more copy
                    # then, borrowed from the budget's future.
                    served = self._served_at.get(block, now)
                    asked = self._denied.get(block, 0) + (now - served >= limits.root_grace)
                    if asked > DEMAND_REFUSALS and self._tokens > -average and (
                        self.waiting <= limits.max_queued_uploads
                    ):
                        self._denied.pop(block, None)
                        self._served_at[block] = now
                        self.copies_demanded += 1
                    else:
                        self._denied[block] = asked
                        if len(self._denied) > REVEALED_MEMORY:
                            self._denied.pop(next(iter(self._denied)))
                        self.refused += 1
                        if self._tokens < average:
                            self.over_budget_at = now
                        return False
                self._tokens -= average
            if copies == 0:
                self._roots.append(peer)
                while len(self._roots) > max(1, self._peers // 2):
                    self._roots.popleft()
                self._served_at[block] = now
                if len(self._served_at) > REVEALED_MEMORY:
                    self._served_at.pop(next(iter(self._served_at)))
                self._root_asked.pop(block, None)
                if len(self._root_asked) > REVEALED_MEMORY:
                    self._root_asked.pop(next(iter(self._root_asked)))
            self._copies[block] = copies + 1
            self._gave(peer, block, 1)
            if len(self._copies) > COPY_MEMORY:
                floor = feed.length - COPY_MEMORY
                self._copies = {b: n for b, n in self._copies.items() if b >= floor}
        elif block >= feed.length - blocks_of(limits.hot_window, limits.block_duration):
            # Everyone near wants a new block at once: keep only a short queue for it, so a peer
            # we cannot serve soon asks one that just got it (that is how a block spreads fast).
            # Live pushes waiting for our uplink take one of those places. A block no other
            # neighbour holds may take one place more: otherwise a busy first holder (a
            # broadcaster's neighbour gets many first copies) kept its queue full with blocks
            # others could give, and the one only it held waited seconds for a free place.
            limit = limits.max_queued_relays - (1 if self.pushing() else 0)
            if self.waiting == limit and not self.held_elsewhere(peer, block):
                pass  # rarest first: one place more
            elif self.waiting >= limit:
                self.refused += 1
                return False
        elif self.waiting >= limits.max_queued_history:
            self.refused += 1
            return False
        self.waiting += 1
        return True

    def pushed(self, peer: Hashable, block: int) -> None:
        """A writer pushed `block` to `peer` (live push): that is the block's first copy."""
        if not self.feed.writable:
            return
        copies = self._copies.get(block, 0)
        if copies == 0:
            self._roots.append(peer)
            while len(self._roots) > max(1, self._peers // 2):
                self._roots.popleft()
        self._copies[block] = copies + 1
        self._gave(peer, block, 1)

    def _gave(self, peer: Hashable, block: int, n: int) -> None:
        """Count (n = 1) or uncount (n = -1) a writer's copy of a new block to `peer`."""
        given = self._given.setdefault(peer, {})
        given[block] = given.get(block, 0) + n
        if given[block] <= 0:
            del given[block]
        if len(given) > REVEALED_MEMORY:
            given.pop(next(iter(given)))

    def started(self) -> None:
        """An admitted answer is being sent now."""
        self.waiting -= 1

    def dropped(self, peer: Hashable, block: int) -> None:
        """An admitted answer to `peer` was cancelled or its session closed before it went out."""
        self.waiting -= 1
        if self.feed.writable and self._copies.get(block, 0) > 0:
            self._copies[block] -= 1
            self._gave(peer, block, -1)
