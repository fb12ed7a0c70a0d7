"""History backfill and a bounded store, sans-IO: how many copies of each block the neighbours hold,
which missing block to fetch next (the rarest), when a block is safe (held by `keep` peers besides
the broadcaster), and which held blocks to evict when the store is over its bound.

The counts come from what the neighbours announced (`range`, `bitfield`, `range` with drop): a
node sees its own neighbourhood only, so a count is a lower bound of the copies in the swarm.
The Replicator (core.scheduler) asks this module what to fetch once its live edge and playback
window are served; the adapter asks it what to evict. Rules only: no I/O, time passed in.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from streamer.core.compat import SLOTS

__all__ = [
    "DEFAULT_KEEP",
    "Backfill",
    "Safety",
    "copy_counts",
    "describe_runs",
    "missing_runs",
    "parse_keep",
    "to_runs",
    "unavailable_runs",
]

DEFAULT_KEEP = 3  # peers besides the broadcaster that should hold every block
KEEP_ALL: None = None  # keep=None: fetch every block (a full copy) and never evict
BACKFILL_INFLIGHT = 1  # backfill requests out at once: history never crowds out the live edge
PACE_S = 1.0  # seconds between backfill requests per second of media asked for: history at most
# as fast as the stream itself (one 1 s block a second, or five 0.2 s parts)
RESCAN_S = 1.0  # a pass that found nothing to fetch is not repeated sooner than this
CANDIDATES = 32  # blocks handed to the scheduler per pass (it skips the ones it cannot place)

Runs = Iterable[tuple[int, int]]


def parse_keep(text: str) -> int | None:
    """`--keep N|all|0`: an int >= 0, or None for all. ValueError with a one-line reason."""
    value = text.strip().lower()
    if value == "all":
        return KEEP_ALL
    try:
        keep = int(value)
    except ValueError:
        raise ValueError(f"--keep {text!r} is not a number of peers, 'all' or 0") from None
    if keep < 0:
        raise ValueError("--keep must be 0 (opt out), a positive number of peers, or 'all'")
    return keep


def copy_counts(length: int, holders: Iterable[Runs]) -> list[int]:
    """For each block 0..length-1, how many of `holders` (each a list of (start, end) runs of
    blocks it holds) hold it."""
    diff = [0] * (length + 1)
    for runs in holders:
        for start, end in runs:
            start, end = max(0, start), min(end, length)
            if start < end:
                diff[start] += 1
                diff[end] -= 1
    return list(accumulate(diff[:length]))


def missing_runs(length: int, held: Runs) -> list[tuple[int, int]]:
    """The runs of blocks 0..length-1 that `held` (sorted, disjoint runs) lacks."""
    out: list[tuple[int, int]] = []
    at = 0
    for start, end in held:
        start, end = max(start, at), min(end, length)
        if start > at:
            out.append((at, min(start, length)))
        at = max(at, end)
        if at >= length:
            break
    if at < length:
        out.append((at, length))
    return [(s, e) for s, e in out if s < e]


def to_runs(blocks: Iterable[int]) -> list[tuple[int, int]]:
    """Block indexes as sorted (start, end) runs."""
    out: list[tuple[int, int]] = []
    for b in sorted(blocks):
        if out and out[-1][1] == b:
            out[-1] = (out[-1][0], b + 1)
        elif not out or out[-1][1] < b:
            out.append((b, b + 1))
    return out


def unavailable_runs(length: int, own: Runs, holders: Iterable[Runs]) -> list[tuple[int, int]]:
    """Runs of blocks 0..length-1 that `own` lacks and none of `holders` holds: lost, unless a
    peer that holds them comes online."""
    counts = copy_counts(length, holders)
    out: list[tuple[int, int]] = []
    for start, end in missing_runs(length, own):
        for block in range(start, end):
            if counts[block]:
                continue
            if out and out[-1][1] == block:
                out[-1] = (out[-1][0], block + 1)
            else:
                out.append((block, block + 1))
    return out


def describe_runs(runs: Sequence[tuple[int, int]], limit: int = 4) -> str:
    """'block 1', 'blocks 1..3, 7' (inclusive, as users count), at most `limit` runs shown."""
    parts = [f"{s}" if e - s == 1 else f"{s}..{e - 1}" for s, e in runs[:limit]]
    if len(runs) > limit:
        parts.append(f"and {len(runs) - limit} more runs")
    single = len(runs) == 1 and runs[0][1] - runs[0][0] == 1
    return ("block " if single else "blocks ") + ", ".join(parts)


@dataclass(frozen=True, **SLOTS)
class Safety:
    """How safe a stream is as one node sees it: of `length` blocks, `safe` are held by at least
    `target` peers besides the broadcaster; the rarest block has `rarest` copies; `only_here` are
    the runs of blocks no peer besides this node (and the broadcaster) holds."""

    length: int
    target: int
    safe: int
    rarest: int
    only_here: tuple[tuple[int, int], ...] = ()

    @property
    def share(self) -> float:
        return round(self.safe / self.length, 4) if self.length else 1.0

    @property
    def only_here_blocks(self) -> int:
        return sum(e - s for s, e in self.only_here)


class Backfill:
    """One node's backfill policy. `keep`: peers besides the broadcaster that should hold each
    block (0: do not fetch history for the swarm; None: fetch all of it, never evict).
    `fetch`: whether this node fetches history at all (the broadcaster and tools only count)."""

    def __init__(
        self,
        keep: int | None = DEFAULT_KEEP,
        *,
        fetch: bool = False,
        max_inflight: int = BACKFILL_INFLIGHT,
        rescan: float = RESCAN_S,
        pace: float = PACE_S,
        seed: int | None = None,
    ) -> None:
        if keep is not None and keep < 0:
            raise ValueError("keep is a number of peers >= 0, or None for all")
        self.keep = keep
        self.fetch = fetch and keep != 0
        self.max_inflight = max_inflight
        self.rescan = rescan
        self.pace = pace
        self.requested = 0  # backfill requests sent over the node's life
        self.evicted = 0  # blocks evicted from the store over the node's life
        self.full = False  # the store is at its bound: fetch no more history (the adapter sets it)
        self._rng = random.Random(seed)
        self._next_scan = float("-inf")
        self._inflight: set[int] = set()

    @property
    def target(self) -> int:
        """The copy count a block needs to be safe (for stats when keep is 0 or all: the default)."""
        return self.keep if self.keep else DEFAULT_KEEP

    # ------------------------------------------------------------ what to fetch

    def inflight(self, still_out: Callable[[int], bool]) -> int:
        """Backfill requests still out (`still_out(block)` says whether one is)."""
        self._inflight = {b for b in self._inflight if still_out(b)}
        return len(self._inflight)

    def choose(
        self,
        now: float,
        length: int,
        own: Runs,
        others: Iterable[Runs],
        sources: Iterable[Runs],
        skip: Callable[[int], bool],
    ) -> list[int]:
        """Blocks to ask for now, rarest first (random among equals), at most CANDIDATES: blocks we
        lack that fewer than `keep` of `others` (our non-broadcaster neighbours) hold and some of
        `sources` (every neighbour, the broadcaster too) can serve. `skip(block)`: already asked.
        Empty when not fetching, when the backfill requests out are at their cap, or when the last
        pass found nothing less than `rescan` seconds ago (new announcements wait for the next)."""
        if now < self._next_scan:
            return []
        self._next_scan = float("-inf")  # no wake-up is due unless this pass finds nothing
        if not self.fetch or self.full or length <= 0 or len(self._inflight) >= self.max_inflight:
            return []
        keep = self.keep
        counts = copy_counts(length, others)
        available = copy_counts(length, sources)
        picks: list[tuple[int, float, int]] = []
        rand = self._rng.random
        for start, end in missing_runs(length, own):
            for block in range(start, end):
                n = counts[block]
                if (keep is None or n < keep) and available[block] and not skip(block):
                    picks.append((n, rand(), block))
        if not picks:
            self._next_scan = now + self.rescan
            return []
        picks.sort()
        return [block for _, _, block in picks[:CANDIDATES]]

    @property
    def blocks(self) -> frozenset[int]:
        """The blocks asked for as backfill and (as of the last `inflight`) still out."""
        return frozenset(self._inflight)

    def blocked(self, now: float, wait: float) -> None:
        """Candidates existed but none could be asked for now (their holders refused or have
        one of ours out): look again after `wait` rather than at every message."""
        self._next_scan = now + wait

    def wake_at(self, now: float) -> float | None:
        """When the next pass may look again after one that found nothing (for the timer, so that
        announcements that arrive meanwhile are looked at without waiting for input); None when
        no such pass is pending after `now`."""
        if not self.fetch or self.full or self._next_scan <= now:
            return None
        return self._next_scan

    def sent(self, block: int, now: float, duration: float = 1.0) -> None:
        """The scheduler asked a peer for `block` (`duration` seconds of media) as backfill: the
        next may go `pace` x `duration` seconds later at the soonest, so history trickles through
        spare capacity instead of bursting, at the same media rate whatever the block size."""
        self._inflight.add(block)
        self.requested += 1
        self._next_scan = max(self._next_scan, now + self.pace * duration)

    def room(self) -> int:
        return max(0, self.max_inflight - len(self._inflight))

    # ------------------------------------------------------------ how safe the stream is

    def safety(self, length: int, others: Iterable[Runs], own: Runs | None) -> Safety:
        """Copies per block among `others` (non-broadcaster neighbours) plus our own copy when
        `own` is given (a viewer's; the broadcaster passes None: its copy does not count)."""
        holders = list(others)
        if own is not None:
            holders.append(own)
        counts = copy_counts(length, holders)
        target = self.target
        only: list[tuple[int, int]] = []
        # "Only here": no neighbour holds it (a viewer's own copy is the only one it knows of).
        bare = copy_counts(length, holders[: len(holders) - (own is not None)])
        run_start = -1
        for block in range(length):
            if bare[block] == 0 and run_start < 0:
                run_start = block
            elif bare[block] and run_start >= 0:
                only.append((run_start, block))
                run_start = -1
        if run_start >= 0:
            only.append((run_start, length))
        return Safety(
            length=length,
            target=target,
            safe=sum(1 for n in counts if n >= target),
            rarest=min(counts, default=0),
            only_here=tuple(only),
        )

    # ------------------------------------------------------------ a bounded store

    def evictions(
        self,
        over: int,
        held: Runs,
        others: Iterable[Runs],
        size: Callable[[int], int],
        protect: Callable[[int], bool],
    ) -> list[int]:
        """Held blocks to drop to free at least `over` bytes, oldest well-replicated first: blocks
        at least `keep` (else the default target) of `others` hold, oldest first; then, if that
        is not enough, blocks at least one other holds; then the oldest of the rest. Never a
        block `protect(block)` keeps (the header, the playback window, the live edge). Nothing
        with keep=None (a full copy is kept whole)."""
        if over <= 0 or self.keep is None:
            return []
        held_runs = list(held)
        length = max((e for _, e in held_runs), default=0)
        counts = copy_counts(length, others)
        target = self.target
        tiers: tuple[list[int], list[int], list[int]] = ([], [], [])
        for start, end in held_runs:
            for block in range(start, end):
                if protect(block):
                    continue
                n = counts[block]
                tiers[0 if n >= target else 1 if n >= 1 else 2].append(block)
        out: list[int] = []
        freed = 0
        for tier in tiers:
            for block in tier:
                if freed >= over:
                    return sorted(out)
                out.append(block)
                freed += size(block)
        return sorted(out)
