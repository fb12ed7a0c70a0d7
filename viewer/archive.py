"""`viewer archive` and `viewer seed`: fetch a whole stream into a directory (resumable, optionally
following it live to its end), and keep an archived stream available to the swarm.

Both are the sparse feed on disk plus a NetworkReplicator: an interrupted archive resumes where
it stopped because the feed remembers what it holds. Nothing unverified is ever stored.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from streamer.core.backfill import describe_runs, missing_runs
from streamer.core.errors import NetworkError, UsageError
from streamer.core.feed import Feed
from streamer.media.format import feed_ended
from streamer.net.aio import FeedWakeup, run_until, stop_on_signals
from streamer.net.replicator import NetworkReplicator
from viewer.netsource import (
    network_replicator,
    open_store,
    resolve_stream,
    store_lock,
    until_failed,
    wait_for_stream,
)

INTERRUPTED = 130  # the shell's code for "stopped by Ctrl-C"
NOWHERE_AFTER_S = 5.0  # no progress this long, and what is missing is held by no peer: stop


@dataclass(frozen=True, slots=True)
class ArchiveOptions:
    stream: str  # KEY or NAME
    directory: Path
    hub: str
    follow: bool = False
    timeout: float = 30.0  # no peer, or no progress, for this long: give up (resumable)
    ice: str | None = None  # --ice (None: the environment's or the hub's ICE servers)
    hub_ca: str | None = None  # --hub-ca: a private CA for an https hub


@dataclass(slots=True)
class ArchiveResult:
    complete: bool
    length: int
    blocks: int
    byte_length: int
    ended: bool


def _done(feed: Feed, target: int, follow: bool) -> bool:
    if follow:
        return feed_ended(feed) and feed.contiguous_length >= feed.length
    return feed.contiguous_length >= target


async def archive(
    options: ArchiveOptions,
    *,
    stop: asyncio.Event | None = None,
    progress: Callable[[NetworkReplicator, int], None] | None = None,
    status: Callable[[str], None] | None = None,
) -> ArchiveResult:
    """Fetch every block (up to the length first learned, or to the end with follow) into the
    directory. Returns when done or when `stop` is set; NetworkError when nothing arrives for
    `options.timeout` seconds; LocalStorageError at once when our disk refuses a write (what is
    stored stays consistent, and the same command resumes)."""
    if options.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    key = await resolve_stream(options.stream, options.hub, options.hub_ca)
    with store_lock(options.directory):
        return await _archive(key, options, stop or asyncio.Event(), progress, status)


async def _archive(
    key: bytes,
    options: ArchiveOptions,
    stop: asyncio.Event,
    progress: Callable[[NetworkReplicator, int], None] | None,
    status: Callable[[str], None] | None,
) -> ArchiveResult:
    # Opening (or creating) a feed fsyncs: off the loop, like every other disk flush.
    feed = await asyncio.to_thread(open_store, options.directory, key)
    net = network_replicator(
        feed, options.hub, archive=True, live=options.follow, ice=options.ice,
        hub_ca=options.hub_ca,
    )
    try:
        await net.start()
        if not (feed.length > 0 and feed.has(0)):
            await run_until(until_failed(net, wait_for_stream(net, options.timeout, status)), stop)
        target = max(feed.length, net.remote_length())
        await run_until(until_failed(net, _fetch(net, target, options, progress)), stop)
    finally:
        await net.stop()
        result = ArchiveResult(
            complete=_done(feed, max(feed.length, 1), options.follow),
            length=feed.length,
            blocks=feed.blocks_present,
            byte_length=feed.byte_length,
            ended=feed_ended(feed),
        )
        await asyncio.to_thread(feed.close)
    # A disk that refused the last flush (in stop()) fails the command too.
    net.raise_if_failed()
    return result


async def _fetch(
    net: NetworkReplicator,
    target: int,
    options: ArchiveOptions,
    progress: Callable[[NetworkReplicator, int], None] | None,
) -> None:
    feed = net.feed
    loop = asyncio.get_running_loop()
    last_progress = loop.time()
    seen = feed.blocks_present
    # Blocks no neighbour holds stop the archive sooner than `timeout`: once nothing arrived for
    # this long, with peers that told us what they hold, waiting longer fetches nothing.
    settle = min(options.timeout, NOWHERE_AFTER_S)
    with FeedWakeup(feed) as changed:
        while True:
            if options.follow:
                target = max(target, feed.length, net.remote_length())
            if progress is not None:
                progress(net, target)
            if _done(feed, target, options.follow):
                return
            if feed.blocks_present != seen or feed.length > target:
                seen, last_progress = feed.blocks_present, loop.time()
            idle = loop.time() - last_progress
            live = options.follow and net.writer_connected
            have = f"have {_held(feed, target)} of {target} blocks in {options.directory}"
            if idle >= settle and net.peers and not live and not net.replicator.inflight_blocks:
                lost = net.nowhere(target)
                if lost and lost == _lacking(feed, target):
                    one = sum(e - b for b, e in lost) == 1
                    raise NetworkError(
                        f"{describe_runs(lost)} {'is' if one else 'are'} held by none of the "
                        f"{net.peers} online peer(s) ({have}); run the same command again when "
                        f"a peer that holds {'it' if one else 'them'} is online"
                    )
            if idle >= options.timeout and not live:
                raise NetworkError(
                    f"no progress for {options.timeout:.0f} s with {net.peers} peer(s) "
                    f"({have}); run the same command again to resume"
                )
            await changed.wait(0.5)


def _held(feed: Feed, target: int) -> int:
    """Blocks below `target` held: what the progress bar and every message count."""
    return sum(min(e, target) - s for s, e in feed.present_ranges() if s < target)


def _lacking(feed: Feed, target: int) -> list[tuple[int, int]]:
    return missing_runs(min(target, feed.length), feed.present_ranges())


def run_archive(options: ArchiveOptions) -> int:
    """The command: a rich progress bar on stderr; 0 when complete, 130 when interrupted."""
    from streamer.net.loop import run

    console = Console(stderr=True)

    async def main() -> int:
        stop = asyncio.Event()
        stop_on_signals(stop)
        columns = (
            TextColumn("[bold]archive"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("blocks {task.fields[mb]:.1f} MB {task.fields[peers]} peer(s)"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("archive", total=None, mb=0.0, peers=0)

            def show(net: NetworkReplicator, target: int) -> None:
                feed = net.feed
                bar.update(
                    task,
                    total=max(target, 1),
                    completed=_held(feed, target),
                    mb=net.stats().bytes_down / 1e6,
                    peers=net.peers,
                )

            def status(line: str) -> None:
                bar.console.print(line)

            result = await archive(options, stop=stop, progress=show, status=status)
        if result.complete:
            note = " (stream ended)" if result.ended else ""
            print(
                f"archived {result.blocks} blocks ({result.byte_length} bytes) in "
                f"{options.directory}{note}",
                flush=True,
            )
            return 0
        print(
            f"interrupted with {result.blocks} of {result.length} blocks in {options.directory}; "
            "run the same command again to resume",
            file=sys.stderr,
            flush=True,
        )
        return INTERRUPTED

    return run(main())


async def seed(
    directory: Path,
    hub: str,
    *,
    stop: asyncio.Event,
    on_ready: Callable[[Feed], None] | None = None,
    ice: str | None = None,
    hub_ca: str | None = None,
) -> None:
    """Serve the stream archived in `directory` to its swarm until `stop` is set."""
    with store_lock(directory, create=False):
        feed = await asyncio.to_thread(Feed.open, directory)
        if feed.length == 0:
            feed.close()
            raise UsageError(f"{directory} holds an empty feed; archive a stream into it first")
        net = network_replicator(feed, hub, ice=ice, hub_ca=hub_ca)
        try:
            await net.start()
            if on_ready is not None:
                on_ready(feed)
            await until_failed(net, stop.wait())
        finally:
            await net.stop()
            await asyncio.to_thread(feed.close)
        net.raise_if_failed()


def run_seed(
    directory: Path, hub: str, ice: str | None = None, hub_ca: str | None = None
) -> int:
    from streamer.net.loop import run

    async def main() -> int:
        stop = asyncio.Event()
        stop_on_signals(stop)

        def ready(feed: Feed) -> None:
            print(feed.key.hex(), flush=True)
            print(
                f"seeding {feed.blocks_present} of {feed.length} blocks of stream "
                f"{feed.key.hex()[:16]}... via {hub} (Ctrl-C to stop)",
                file=sys.stderr,
                flush=True,
            )

        await seed(directory, hub, stop=stop, on_ready=ready, ice=ice, hub_ca=hub_ca)
        return 0

    return run(main())
