"""NetworkSource: the player's BlockSource over a sparse local feed filled from the swarm, plus the
helpers the network commands share (KEY|NAME resolution, the store directory, joining the swarm).

Blocks it hands out are held by the local feed, so they verified against the broadcaster's
signature before they were stored; everything fetched stays on disk and is re-shared. It never
blocks the event loop and never parses media beyond a segment's fixed header.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from streamer.core import storage
from streamer.core.errors import (
    NetworkError,
    UsageError,
)
from streamer.core.feed import Feed
from streamer.core.names import is_valid_name
from streamer.core.scheduler import PRIORITY_HIGH
from streamer.core.stats import ReplicationStats
from streamer.media.format import StreamHeader, Timeline
from streamer.net.aio import Deadline, FeedWakeup, run_until
from streamer.net.hubclient import HubClient
from streamer.net.iceservers import ICE_ENV
from streamer.net.replicator import NetworkReplicator
from streamer.net.swarm import Swarm
from viewer.source import LocalFeedSource

HUB_ENV = "SWARMCAST_HUB"
DEFAULT_HUB = "http://127.0.0.1:8000"
KEY_PATTERN = re.compile(r"[0-9a-fA-F]{64}")

T = TypeVar("T")


def default_hub() -> str:
    """The hub URL when --hub is not given: $SWARMCAST_HUB, else a hub on this machine."""
    return os.environ.get(HUB_ENV) or DEFAULT_HUB


def add_network_options(parser: argparse.ArgumentParser) -> None:
    """--hub, --hub-ca and --ice, shared by every command that joins a swarm."""
    parser.add_argument(
        "--hub", metavar="URL", help=f"signaling hub (default: ${HUB_ENV} or {DEFAULT_HUB})"
    )
    parser.add_argument(
        "--hub-ca", metavar="FILE", default=None,
        help="PEM certificate of the private CA that signed an https hub's certificate "
        "(default: the system's CAs, or $SSL_CERT_FILE)",
    )
    parser.add_argument(
        "--ice", metavar="SERVERS", default=None,
        help=f"STUN/TURN servers as in ${ICE_ENV}, or 'none' (default: ${ICE_ENV}, else the "
        "hub's)",
    )


def default_store(key: bytes) -> Path:
    """Where `viewer watch` keeps a stream: a folder per key in the user's data directory."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "swarmcast" / key.hex()


async def resolve_stream(key_or_name: str, hub: str, hub_ca: str | None = None) -> bytes:
    """The stream key for a 64-hex-digit KEY or a NAME registered on the hub (verified record)."""
    if KEY_PATTERN.fullmatch(key_or_name):
        return bytes.fromhex(key_or_name)
    if not is_valid_name(key_or_name):
        raise UsageError(
            f"{key_or_name!r} is neither a stream key (64 hex digits) nor a stream name "
            "(a-z 0-9 . _ -); check what the broadcaster gave you"
        )
    async with HubClient(hub, ca_file=hub_ca) as client:
        return (await client.resolve_name(key_or_name)).key


@contextlib.contextmanager
def store_lock(directory: Path, *, create: bool = True) -> Iterator[None]:
    """Hold `directory` for this process: two viewers fetching into one store would fight over
    its head. With create, a missing directory is made first. UsageError if it is taken."""
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} is a file; give a directory for the stream")
    if create:
        directory.mkdir(parents=True, exist_ok=True)
    elif not directory.is_dir():
        raise UsageError(f"{directory} is not a directory; give a stream archive")
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"{directory} is in use by another viewer process; stop it or use another directory"
            ) from None
        yield
    finally:
        os.close(fd)  # also drops the lock


def open_store(directory: Path, key: bytes) -> Feed:
    """The sparse reader feed for `key` in `directory`, created if new (hold store_lock first).

    KeyMismatchError if the directory holds another stream; UsageError if it holds something else.
    """
    if not storage.is_feed(directory) and any(directory.iterdir()):
        raise UsageError(
            f"{directory} holds files but no stream feed; give a new or empty directory"
        )
    return Feed.open(directory, key=key, create=True)


def network_replicator(
    feed: Feed, hub: str, *, archive: bool = False, live: bool = True, max_peers: int = 6,
    ice: str | None = None, hub_ca: str | None = None,
) -> NetworkReplicator:
    """A replicator for `feed` over the swarm found through `hub` (not started yet); `ice` and
    `hub_ca` as --ice and --hub-ca (None: the environment's, then the hub's ICE servers)."""
    swarm = Swarm(
        feed.discovery_key, feed.key, [hub], max_peers=max_peers, ice_servers=ice, hub_ca=hub_ca
    )
    return NetworkReplicator(feed, swarm, archive=archive, live=live)


async def until_failed(net: NetworkReplicator, work: Awaitable[T]) -> T:
    """Await `work`; if replication stops on our own failure meanwhile (a full disk), cancel it
    and raise that failure (one line) instead of waiting for a timeout that would blame peers."""
    try:
        result = await run_until(work, net.failed)
    except Exception:
        net.raise_if_failed()  # our failure is the cause: it wins over what it caused
        raise
    net.raise_if_failed()
    return cast(T, result)


async def wait_for_stream(
    net: NetworkReplicator,
    timeout: float,
    status: Callable[[str], None] | None = None,
) -> None:
    """Wait until the feed's signed length is known and its header block is held.

    NetworkError after `timeout` seconds without that (no peer, or peers that lack it).
    """
    feed = net.feed
    deadline = Deadline(timeout)
    told = False
    with FeedWakeup(feed) as changed:
        while not (feed.length > 0 and feed.has(0)):
            if feed.length > 0:
                net.want(0, 1, PRIORITY_HIGH)
            if deadline.expired():
                raise NetworkError(_no_stream_message(net, feed, timeout))
            if not told and status is not None and net.peers == 0:
                status(
                    f"waiting for peers of stream {feed.key.hex()[:16]}... (up to {timeout:.0f} s)"
                )
                told = True
            await changed.wait(deadline.capped(0.5))


def _no_stream_message(net: NetworkReplicator, feed: Feed, timeout: float) -> str:
    key = feed.key.hex()
    if net.peers == 0:
        return (
            f"no peer of stream {key} answered within {timeout:.0f} s; check the key and the hub "
            "(--hub), and that the broadcaster or a seeder is online"
        )
    return (
        f"{net.peers} peer(s) of stream {key} did not send its header within {timeout:.0f} s; "
        "try again later"
    )


class NetworkSource(LocalFeedSource):
    """The blocks of a stream from the swarm, stored in (and re-shared from) a local sparse feed.

    get(i) asks the swarm for block i ahead of everything else and waits for it; set_playhead
    moves the window the replicator fetches first. Owns `net` and `feed`: close() stops and
    closes them.
    """

    _can_fetch = True

    def __init__(self, net: NetworkReplicator) -> None:
        super().__init__(net.feed)
        self.net = net
        self._header: StreamHeader | None = None
        self._timeline = Timeline()

    def set_playhead(self, index: int) -> None:
        super().set_playhead(index)
        self.net.set_playhead(self._playhead)

    def _request(self, index: int) -> None:
        # Ahead of the playback window: someone is waiting for exactly this block.
        self.net.want(index, index + 1, PRIORITY_HIGH)

    def holes(self) -> list[tuple[int, int]]:
        return self.net.replicator.holes(self.last_media)

    async def header(self, timeout: float) -> StreamHeader:
        """The stream header (block 0), fetched if needed."""
        if self._header is None:
            self._header = StreamHeader.decode(await self.get(0, timeout))
            # The scheduler's windows are seconds of media: now it knows a block's length.
            self.net.replicator.config.block_duration = self._header.block_duration
        return self._header

    async def start_block(self, timeout: float, at: float | None = None) -> int:
        """The block to start playing from: the independent part (a keyframe) that the newest
        media block, or the one covering `at` seconds of stream time, decodes from. Fetches it
        (and the few headers the search reads) before returning."""
        deadline = Deadline(timeout)
        header = await self.header(timeout)
        while self._feed.length < 2:
            # Only the header so far: the broadcaster has just started.
            if deadline.expired():
                raise TimeoutError("the stream has no media block yet")
            await self.wait_for_change(deadline.capped(1.0))
        length = self._feed.length
        timeline = self._timeline
        if at is None:
            timeline.add_block(length - 1, await self.get(length - 1, timeout))
            index = timeline.newest_media(length)
            if index != length - 1:
                timeline.add_block(index, await self.get(index, timeout))
        else:
            # The grid gives a first guess; the fixed headers settle the rest in a few jumps.
            index = Timeline.grid_index(at, length, header.grid)
            for _ in range(12):
                timeline.add_block(index, await self.get(index, timeout))
                step = timeline.seek_step(index, at, length)
                if step == index:
                    break
                index = step
        join = timeline.join_point(index)
        if join != index:
            timeline.add_block(join, await self.get(join, timeout))
        if self.join_block is None:
            self.join_block = join
        return join

    def _swarm_stats(self) -> ReplicationStats:
        return self.net.stats()

    def stats(self) -> dict[str, Any]:
        """The node's stats, plus the signaling messages its swarm dropped for lack of a valid
        proof (forged, replayed, stale: `signals_refused`)."""
        swarm = self.net.swarm
        refused = swarm.stats.signals_refused if swarm is not None else 0
        return {**super().stats(), "signals_refused": refused}

    async def close(self) -> None:
        await super().close()
        await self.net.stop()
        # The last flush of what was verified: off the loop.
        await asyncio.to_thread(self._feed.close)
