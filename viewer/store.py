"""A watching viewer's store, bounded: `--keep` (how many peers besides the broadcaster should hold
each block; the viewer backfills history until they do) and `--max-store` (bytes kept on disk; the
oldest well-replicated blocks are evicted first, and the neighbours are told they are gone).

The rules (what to fetch, what to evict) are core.backfill's; this module parses the options and
runs the periodic check: disk work in worker threads, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

from streamer.core.backfill import DEFAULT_KEEP, Backfill, describe_runs, parse_keep, to_runs
from streamer.core.errors import UsageError
from streamer.net.replicator import NetworkReplicator

__all__ = ["DEFAULT_MAX_STORE", "StoreKeeper", "parse_keep_option", "parse_store_size"]

log = logging.getLogger("viewer.store")

DEFAULT_MAX_STORE = "4G"
CHECK_S = 2.0  # how often the store's size is checked
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_keep_option(text: str) -> int | None:
    """`--keep N|all|0` for the CLI: UsageError (one line) when it is not one of those."""
    try:
        return parse_keep(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse_store_size(text: str) -> int:
    """`--max-store 500M|4G|...` in bytes (binary units); UsageError when it is not a size."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"--max-store {text!r} is not a size; give e.g. 500M or 4G")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < 1 << 20:
        raise UsageError(f"--max-store {text} is too small; give at least 1M")
    return size


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


class StoreKeeper:
    """Turns on backfill for `net` and keeps its feed's held bytes under `max_store` (None: no
    bound) until stopped; `say` receives the one line written for each eviction."""

    def __init__(
        self,
        net: NetworkReplicator,
        keep: int | None = DEFAULT_KEEP,
        max_store: int | None = None,
        *,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.net = net
        self.keep = keep
        self.max_store = None if keep is None else max_store  # a full copy is kept whole
        self._say = say or log.info
        self._task: asyncio.Task[None] | None = None
        net.replicator.backfill = Backfill(keep, fetch=True, seed=net.replicator.config.seed)

    def start(self) -> None:
        if self.max_store is not None and self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(CHECK_S)

    async def check(self) -> list[int]:
        """One look at the store: evict what is over the bound; returns the blocks evicted."""
        net, limit = self.net, self.max_store
        feed = net.feed
        if limit is None or feed.closed or net.failure is not None:
            return []
        held = await asyncio.to_thread(feed.held_bytes)
        average = feed.byte_length / max(feed.length, 1)
        backfill = net.replicator.backfill
        # No more history once another block would not fit; live blocks are still kept.
        backfill.full = held + average > limit
        over = int(held + average - limit)
        if over <= 0:
            return []
        blocks = net.replicator.evictions(over, feed.block_size)
        if not blocks:
            return []
        dropped = await asyncio.to_thread(feed.evict, blocks)
        if not dropped:
            return []
        net.dropped(dropped)
        runs = to_runs(dropped)
        self._say(
            f"store over its bound of {_human(limit)}: evicted {describe_runs(runs)} "
            f"({_human(held - sum(feed.block_size(b) for b in dropped))} kept), oldest "
            "well-replicated first"
        )
        return dropped
