"""NetworkReplicator over real aiortc peers found through a real hub (in-process, 127.0.0.1): a
real encoded stream (the Broadcaster on the test pattern) replicates live from the writer to
viewers, viewers pass blocks to each other, and a viewer re-shares to one that arrives after the
writer left. The copies verify and export to a playable MP4, and a viewer's copy becomes durable
without the event loop ever waiting for the disk."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path

import av
import pytest

from streamer.broadcast import Broadcaster, BroadcastOptions, plan_settings
from streamer.core import crypto
from streamer.core.feed import Feed
from streamer.core.replication import BlockVerified, Event
from streamer.hub import HubConfig, HubServer, start_hub
from streamer.media.format import SegmentHeader
from streamer.media.sources import open_source
from streamer.net.replicator import NetworkReplicator
from streamer.net.swarm import Swarm
from tests.waiting import eventually
from viewer.export import export_feed_async
from viewer.netsource import NetworkSource
from viewer.source import STATS_KEYS

WRITER = crypto.key_pair(b"\x07" * 32)


@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    server = await start_hub(config=HubConfig(rate_per_second=10_000, rate_burst=10_000))
    yield server
    await server.stop()


@pytest.fixture
async def nodes(hub: HubServer) -> AsyncIterator[Callable[..., NetworkReplicator]]:
    made: list[NetworkReplicator] = []

    def make(
        feed: Feed, *, max_peers: int = 6, writer: bool = False, **kwargs
    ) -> NetworkReplicator:
        swarm = Swarm(
            feed.discovery_key,
            feed.key,
            [hub.url],
            max_peers=max_peers,
            announce_interval=0.5,
            ice_servers=[],
            writer_secret_key=WRITER.secret_key if writer else None,
        )
        node = NetworkReplicator(feed, swarm, **kwargs)
        made.append(node)
        return node

    yield make
    await asyncio.gather(*(n.stop() for n in made))
    for n in made:
        n.feed.close()


def broadcaster(feed: Feed, seconds: float, part: float | None = None) -> Broadcaster:
    source = open_source("test", fast=True, test_size=(160, 120), test_fps=15.0)
    options = BroadcastOptions(
        size=(160, 120), fps=Fraction(15), bitrate=200_000, duration=seconds, fast=True, part=part
    )
    return Broadcaster(feed, source, plan_settings(source, options), options)


def complete(reader: Feed, writer: Feed) -> bool:
    return reader.length == writer.length and reader.contiguous_length == writer.length


def assert_same_stream(reader: Feed, writer: Feed) -> None:
    assert reader.tree_hash() == writer.tree_hash()
    assert reader.signature == writer.signature
    reader.verify_all()
    for i in range(writer.length):
        assert reader.get(i) == writer.get(i)


async def assert_plays(directory: Path, out: Path, seconds: float) -> None:
    result = await export_feed_async(directory, out)
    assert not result.partial
    with av.open(str(out)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= int(seconds * 15) - 15


async def test_a_viewer_follows_a_live_encoded_stream_and_gets_an_exact_copy(nodes, tmp_path):
    writer_feed = Feed.create(tmp_path / "w", WRITER)
    reader_feed = Feed.open(tmp_path / "r", key=WRITER.public_key, create=True)
    writer = nodes(writer_feed, writer=True)
    reader = nodes(reader_feed, archive=True)
    verified: list[Event] = []
    reader.add_listener(verified.append)
    await asyncio.gather(writer.start(), reader.start())
    await eventually(lambda: reader.peers == 1 and reader.writer_connected)

    await broadcaster(writer_feed, 4.0).run()
    await eventually(lambda: complete(reader_feed, writer_feed))

    assert_same_stream(reader_feed, writer_feed)
    blocks = [e for e in verified if isinstance(e, BlockVerified)]
    assert sorted(e.index for e in blocks) == list(range(writer_feed.length))
    assert all(e.from_writer for e in blocks)
    stats = reader.stats()
    assert stats.blocks_from_writer == writer_feed.length
    assert stats.share_from_peers == 0.0
    assert stats.bytes_down >= writer_feed.byte_length
    assert writer.stats().blocks_up == writer_feed.length
    await reader.stop()
    reader_feed.close()
    await assert_plays(tmp_path / "r", tmp_path / "r.mp4", 4.0)


async def test_viewers_share_with_each_other_and_reshare_after_the_writer_left(nodes, tmp_path):
    writer_feed = Feed.create(tmp_path / "w", WRITER)
    writer = nodes(writer_feed, writer=True)
    viewers = [
        nodes(Feed.open(tmp_path / f"v{i}", key=WRITER.public_key, create=True), archive=True)
        for i in range(2)
    ]
    await asyncio.gather(writer.start(), *(v.start() for v in viewers))
    await eventually(lambda: all(v.peers == 2 for v in viewers))

    await broadcaster(writer_feed, 6.0).run()
    await eventually(lambda: all(complete(v.feed, writer_feed) for v in viewers))
    for v in viewers:
        assert_same_stream(v.feed, writer_feed)
    # The writer serves each block freely once: the other viewer gets most of it from a peer.
    assert sum(v.stats().blocks_from_peers for v in viewers) > 0
    assert writer.stats().blocks_up < 2 * writer_feed.length
    await writer.stop()

    late_feed = Feed.open(tmp_path / "late", key=WRITER.public_key, create=True)
    late = nodes(late_feed, archive=True)
    await late.start()
    await eventually(lambda: complete(late_feed, writer_feed))
    assert_same_stream(late_feed, writer_feed)
    stats = late.stats()
    assert stats.blocks_from_writer == 0
    assert stats.blocks_from_peers == writer_feed.length
    assert stats.share_from_peers == 1.0
    assert sum(v.stats().blocks_up for v in viewers) >= writer_feed.length


async def test_the_network_source_fetches_what_the_player_asks_for(nodes, tmp_path):
    writer_feed = Feed.create(tmp_path / "w", WRITER)
    # 0.5 s parts: the whole stream fits the playback window (8 blocks) set at block 2 below.
    await broadcaster(writer_feed, 4.0, part=0.5).run()
    writer = nodes(writer_feed, writer=True)
    net = nodes(Feed.open(tmp_path / "r", key=WRITER.public_key, create=True))
    source = NetworkSource(net)
    await asyncio.gather(writer.start(), net.start())

    # The newest block is the end marker: playback starts at the independent part (keyframe)
    # that the last media block decodes from.
    start = await source.start_block(20.0)
    last_media = SegmentHeader.decode(writer_feed.get(writer_feed.length - 2))
    assert start == writer_feed.length - 2 - last_media.back
    assert SegmentHeader.decode(writer_feed.get(start)).independent
    assert source.ended
    # History outside the live window arrives when the player asks for it.
    assert not source.has(1)
    assert await source.get(1, 20.0) == writer_feed.get(1)
    source.set_playhead(2)
    await eventually(lambda: all(source.has(i) for i in range(2, writer_feed.length)))
    stats = source.stats()
    assert set(STATS_KEYS) <= set(stats)
    assert stats["blocks_have"] == writer_feed.length
    assert stats["peers"] == 1 and stats["writer_connected"]
    assert stats["bytes_down"] > 0 and stats["share_from_peers"] == 0.0
    await source.close()


async def test_a_peer_that_sends_garbage_is_dropped_and_banned(nodes, hub, tmp_path):
    writer_feed = Feed.create(tmp_path / "w", WRITER)
    writer_feed.append([b"header", b"block"])
    writer = nodes(writer_feed, writer=True)
    await writer.start()
    rogue = Swarm(
        writer_feed.discovery_key, writer_feed.key, [hub.url], announce_interval=0.5, ice_servers=[]
    )
    await rogue.join()
    try:
        conn = await asyncio.wait_for(anext(rogue.connections()), 20.0)
        await conn.send(b"\xff" * 100)  # a frame that decodes to no protocol message
        await asyncio.wait_for(conn.wait_closed(), 10.0)
        await eventually(lambda: writer.swarm.is_banned(rogue.peer_id), timeout=5.0)
        assert writer.stats().peers_dropped == 1
    finally:
        await rogue.leave()


async def test_a_viewer_makes_what_it_verified_durable_off_the_loop(nodes, tmp_path, monkeypatch):
    writer_feed = Feed.create(tmp_path / "w", WRITER)
    writer_feed.append([bytes([i]) * (1000 + 97 * i) for i in range(40)])
    reader_feed = Feed.open(tmp_path / "r", key=WRITER.public_key, create=True)
    loop_thread = threading.get_ident()
    on_loop: list[str] = []

    def watched(name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            if threading.get_ident() == loop_thread:
                on_loop.append(name)
            real(fd)

        return sync

    monkeypatch.setattr(os, "fsync", watched("fsync", os.fsync))
    monkeypatch.setattr(os, "fdatasync", watched("fdatasync", os.fdatasync))
    writer = nodes(writer_feed, writer=True)
    reader = nodes(reader_feed, archive=True)
    await asyncio.gather(writer.start(), reader.start())
    await eventually(lambda: complete(reader_feed, writer_feed))
    # Nobody asked the viewer to flush: its replicator does, in a worker thread.
    assert await reader.wait_durable(10.0)
    shutil.copytree(tmp_path / "r", tmp_path / "copy1")  # what a kill -9 now would leave
    with Feed.open(tmp_path / "copy1") as copy:
        assert copy.length == 40 and copy.contiguous_length == 40
        copy.verify_all()

    # Live blocks (appended off the loop, as the Broadcaster does) are flushed at stop() at the
    # latest, without waiting for the next periodic flush.
    for i in range(40, 46):
        await asyncio.to_thread(writer_feed.append, [bytes([i]) * 3000])
    await eventually(lambda: complete(reader_feed, writer_feed))
    await reader.stop()
    assert not reader_feed.flush_due
    shutil.copytree(tmp_path / "r", tmp_path / "copy2")
    with Feed.open(tmp_path / "copy2") as copy:
        assert copy.length == 46 and copy.contiguous_length == 46
        copy.verify_all()
    assert on_loop == [], "the event loop thread fsynced"
