"""A real swarm on 127.0.0.1: one broadcaster process and N viewer processes (real aiortc, a real
hub), a 360p test-pattern stream at 800 kbit/s for --seconds (--synthetic: random-filled
segments at exactly that rate, since the test pattern compresses far below it).

Prints, each beside its same-run baseline: the broadcaster's upload over the stream's bytes
(target <= 1.5; a client/server origin would upload the stream once per viewer: N x), every
viewer's delay behind live at p95 (each block's arrival minus its append time; target <= 2 s),
and duplicate downloads over all downloads (target <= 5 %).
Usage: python3 bench/bench_swarm.py [--viewers 10] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from fractions import Fraction
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from streamer.broadcast import Broadcaster, BroadcastOptions, plan_settings
from streamer.commands.broadcast import WRITER_MAX_PEERS
from streamer.core import crypto
from streamer.core.feed import Feed
from streamer.core.replication import BlockVerified, Event, Upgraded
from streamer.hub import HubConfig, start_hub
from streamer.media.format import FLAG_END, Segment, StreamHeader
from streamer.media.sources import open_source
from streamer.net.loop import run
from streamer.net.replicator import NetworkReplicator
from streamer.net.swarm import Swarm

BITRATE = 800_000
WARMUP_S = 5.0  # blocks appended before this much stream time are left out of the delays


async def _pipe_recv(conn: Connection) -> object:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


async def _synthetic(feed: Feed, seconds: float) -> None:
    """Exactly BITRATE: one random-filled 1 s segment per second behind a real stream header."""
    header = StreamHeader(
        "synthetic",
        time.time(),
        'video/mp4; codecs="avc1.64001e"',
        640,
        360,
        30.0,
        1.0,
        init=b"\0" * 1000,
    )
    await asyncio.to_thread(feed.append, [header.encode()])
    start = time.monotonic()
    for n in range(int(seconds)):
        await asyncio.sleep(max(0.0, start + n + 1 - time.monotonic()))
        segment = Segment(float(n), 1.0, time.time(), os.urandom(BITRATE // 8))
        await asyncio.to_thread(feed.append, [segment.encode()])
    end = Segment(float(int(seconds)), 0.0, time.time(), b"", FLAG_END)
    await asyncio.to_thread(feed.append, [end.encode()])


async def _broadcast(
    conn: Connection, directory: str, hub: str, seconds: float, synthetic: bool
) -> None:
    key_pair = crypto.key_pair()
    feed = Feed.create(Path(directory) / "broadcaster", key_pair)
    swarm = Swarm(
        feed.discovery_key,
        feed.key,
        [hub],
        max_peers=WRITER_MAX_PEERS,
        writer_secret_key=key_pair.secret_key,
        announce_interval=2.0,
    )
    net = NetworkReplicator(feed, swarm)
    await net.start()
    conn.send(feed.key)
    await _pipe_recv(conn)  # the viewers are up
    if synthetic:
        await _synthetic(feed, seconds)
    else:
        source = open_source("test", test_size=(640, 360), test_fps=30.0)
        options = BroadcastOptions(
            size=(640, 360), fps=Fraction(30), bitrate=BITRATE, duration=seconds
        )
        await Broadcaster(feed, source, plan_settings(source, options), options).run()
    await net.wait_served(10.0)
    conn.send({"stream_bytes": feed.byte_length, "blocks": feed.length, **net.stats_fields()})
    await net.stop()
    feed.close()


async def _view(conn: Connection, directory: str, hub: str, key: bytes, index: int) -> None:
    feed = Feed.open(Path(directory) / f"viewer{index}", key=key, create=True)
    net = NetworkReplicator(
        feed, Swarm(crypto.discovery_key(key), key, [hub], announce_interval=2.0)
    )
    delays: list[tuple[float, float, bool]] = []  # (stream time, delay, straight from the writer)

    def on_event(event: Event) -> None:
        if isinstance(event, Upgraded):
            # A viewer at the live edge: the newest block is what it plays next.
            net.set_playhead(event.length - 1)
        elif isinstance(event, BlockVerified) and event.index >= 1:
            segment = Segment.decode_header(feed.get(event.index))
            if not segment.end:
                delays.append((segment.pts, time.time() - segment.wall_clock, event.from_writer))

    net.add_listener(on_event)
    await net.start()
    conn.send("up")
    await _pipe_recv(conn)
    conn.send({"delays": delays, **net.stats_fields()})
    await net.stop()
    feed.close()


def _broadcaster_main(
    conn: Connection, directory: str, hub: str, seconds: float, synthetic: bool
) -> None:
    run(_broadcast(conn, directory, hub, seconds, synthetic))


def _viewer_main(conn: Connection, directory: str, hub: str, key: bytes, index: int) -> None:
    run(_view(conn, directory, hub, key, index))


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")


async def _main(viewers: int, seconds: float, synthetic: bool) -> None:
    ctx = mp.get_context("spawn")
    hub = await start_hub(config=HubConfig(rate_per_second=10_000, rate_burst=10_000))
    loop = asyncio.get_running_loop()

    def recv(conn: Connection) -> Any:
        return loop.run_in_executor(None, conn.recv)

    with tempfile.TemporaryDirectory() as directory:
        b_parent, b_child = ctx.Pipe()
        b_proc = ctx.Process(
            target=_broadcaster_main, args=(b_child, directory, hub.url, seconds, synthetic)
        )
        b_proc.start()
        key = await recv(b_parent)
        pipes, procs = [], []
        for i in range(viewers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_viewer_main, args=(child, directory, hub.url, key, i))
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        for parent in pipes:
            await recv(parent)
        b_parent.send("go")
        writer = await recv(b_parent)
        for parent in pipes:
            parent.send("stop")
        results = [await recv(parent) for parent in pipes]
        for proc in [b_proc, *procs]:
            await loop.run_in_executor(None, proc.join, 30)
    await hub.stop()

    stream = writer["stream_bytes"]
    upload = writer["bytes_up"]
    rows = [(d, direct) for r in results for pts, d, direct in r["delays"] if pts >= WARMUP_S]
    all_delays = [d for d, _ in rows]
    direct = [d for d, from_writer in rows if from_writer]
    per_viewer = [p95([d for pts, d, _ in r["delays"] if pts >= WARMUP_S]) for r in results]
    got = sum(r["block_bytes_from_writer"] + r["block_bytes_from_peers"] for r in results)
    dup = sum(r["duplicate_bytes"] for r in results)
    complete = sum(1 for r in results if r["blocks_from_writer"] + r["blocks_from_peers"] > 0)
    what = "random 1 s blocks at exactly" if synthetic else "360p test pattern capped at"
    print(
        f"{viewers} viewers, {seconds:.0f} s of {what} {BITRATE // 1000} kbit/s: "
        f"{writer['blocks']} blocks, {stream / 1e6:.2f} MB ({8 * stream / seconds / 1e3:.0f} kbit/s "
        f"actual); {complete} viewers received blocks"
    )
    print(
        f"broadcaster upload: {upload / 1e6:.2f} MB = {upload / stream:.2f} x the stream "
        f"(target <= 1.5); client/server baseline {viewers * stream / 1e6:.2f} MB = "
        f"{viewers:.0f} x; ratio swarm / baseline {upload / (viewers * stream):.3f}"
    )
    print(
        f"share of viewers' blocks from peers: "
        f"{statistics.mean(r['share_from_peers'] for r in results):.2f}"
    )
    print(
        f"delay behind live p95 over all blocks: {p95(all_delays):.2f} s (target <= 2 s); "
        f"worst viewer p95 {max(per_viewer):.2f} s, median "
        f"{statistics.median(all_delays) if all_delays else float('nan'):.2f} s; baseline "
        f"(blocks straight from the broadcaster, {len(direct)} of {len(rows)}): p95 "
        f"{p95(direct):.2f} s"
    )
    print(
        f"duplicate downloads: {dup / 1e6:.3f} MB = {100 * dup / max(got, 1):.2f} % of "
        f"{got / 1e6:.2f} MB downloaded (target <= 5 %)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="random-filled segments at exactly 800 kbit/s instead of the encoded test pattern "
        "(which compresses far below its cap)",
    )
    args = parser.parse_args()
    run(_main(args.viewers, args.seconds, args.synthetic))


if __name__ == "__main__":
    main()
