"""A live viewer with no neighbour waits and retries instead of exiting: `watch` without a
timeout reports that nobody answered yet and keeps trying, and plays once a broadcaster comes
(real hub, real aiortc peers, in-process)."""

from __future__ import annotations

import asyncio
import contextlib
from fractions import Fraction
from pathlib import Path

import pytest

from streamer.broadcast import Broadcaster, BroadcastOptions, plan_settings
from streamer.core import crypto
from streamer.core.feed import Feed
from streamer.hub import HubConfig, start_hub
from streamer.media.sources import open_source
from streamer.net.replicator import NetworkReplicator
from streamer.net.swarm import Swarm
from viewer import watch as watch_module
from viewer.watch import WatchOptions, watch

WRITER = crypto.key_pair(b"\x08" * 32)


async def test_a_viewer_nobody_serves_keeps_trying_and_plays_when_a_broadcaster_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_module, "RETRY_S", 1.0)
    monkeypatch.setenv("SWARMCAST_ICE_SERVERS", "none")
    hub = await start_hub(config=HubConfig(rate_per_second=10_000, rate_burst=10_000))
    lines: asyncio.Queue[str] = asyncio.Queue()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    options = WatchOptions(
        WRITER.public_key.hex(), hub.url, store=tmp_path / "v", open_browser=False
    )
    watcher = asyncio.ensure_future(
        watch(options, stop=stop, on_ready=ready.set_result, status=lines.put_nowait)
    )
    writer: NetworkReplicator | None = None
    try:
        retries = 0
        while retries < 2:
            line = await asyncio.wait_for(lines.get(), 30.0)
            retries += "still trying" in line
        assert not watcher.done()

        feed = Feed.create(tmp_path / "w", WRITER)
        source = open_source("test", fast=True, test_size=(160, 120), test_fps=15.0)
        options = BroadcastOptions(
            size=(160, 120), fps=Fraction(15), bitrate=200_000, duration=4.0, fast=True
        )
        await Broadcaster(feed, source, plan_settings(source, options), options).run()
        swarm = Swarm(
            feed.discovery_key, feed.key, [hub.url], writer_secret_key=WRITER.secret_key,
            announce_interval=0.5,
        )
        writer = NetworkReplicator(feed, swarm)
        await writer.start()
        url = await asyncio.wait_for(ready, 60.0)
        assert url.startswith("http://127.0.0.1:")
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(watcher, 30.0)
        if writer is not None:
            await writer.stop()
            writer.feed.close()
        await hub.stop()
    assert watcher.result() == 0
