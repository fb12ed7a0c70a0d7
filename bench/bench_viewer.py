"""Benchmark of the viewer over a one-hour archive: seek time through the player server (and in
headless Chromium) and export speed, each beside a baseline measured in the same run.

The hour is synthetic but real media: 10 s of PyAV-encoded video repeated 360 times with the
fragments' decode times (tfdt) and sequence numbers rewritten, so it plays and remuxes like an
hour-long stream. Run: python3 bench/bench_viewer.py [--seeks N] [--no-browser]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.core.feed import Feed  # noqa: E402
from streamer.media.format import (  # noqa: E402
    FLAG_END,
    SEGMENT_HEADER_SIZE,
    Segment,
    StreamHeader,
)
from tests.fixtures_viewer import encode_test_stream  # noqa: E402
from viewer.export import export_feed  # noqa: E402
from viewer.server import PlayerServer  # noqa: E402
from viewer.source import LocalFeedSource  # noqa: E402

HOUR = 3600
CHUNK = 10  # seconds actually encoded, then repeated


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """(type, box start, payload start, box end) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    at = start
    while at < end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        yield kind, at, at + header, at + size
        at += size


def _timescales(init: bytes) -> dict[int, int]:
    """track id -> media timescale, from the init segment's moov."""
    scales: dict[int, int] = {}
    for kind, _, body, end in _boxes(init):
        if kind != b"moov":
            continue
        for tkind, _, tbody, tend in _boxes(init, body, end):
            if tkind != b"trak":
                continue
            track = scale = 0
            for ckind, _, cbody, cend in _boxes(init, tbody, tend):
                if ckind == b"tkhd":
                    v1 = init[cbody] == 1
                    track = struct.unpack_from(">I", init, cbody + (20 if v1 else 12))[0]
                elif ckind == b"mdia":
                    for mkind, _, mbody, _ in _boxes(init, cbody, cend):
                        if mkind == b"mdhd":
                            v1 = init[mbody] == 1
                            scale = struct.unpack_from(">I", init, mbody + (20 if v1 else 12))[0]
            scales[track] = scale
    return scales


def _shift_fragment(
    fragment: bytes, seconds: float, sequence: int, scales: dict[int, int]
) -> bytes:
    """The fragment moved `seconds` later on the timeline (tfdt per track) with a new sequence."""
    out = bytearray(fragment)
    for kind, _, body, end in _boxes(out):
        if kind != b"moof":
            continue
        for ckind, _, cbody, cend in _boxes(out, body, end):
            if ckind == b"mfhd":
                struct.pack_into(">I", out, cbody + 4, sequence)
            elif ckind == b"traf":
                track = 0
                for tkind, _, tbody, _ in _boxes(out, cbody, cend):
                    if tkind == b"tfhd":
                        track = struct.unpack_from(">I", out, tbody + 4)[0]
                    elif tkind == b"tfdt":
                        shift = round(seconds * scales[track])
                        if out[tbody] == 1:
                            value = struct.unpack_from(">Q", out, tbody + 4)[0]
                            struct.pack_into(">Q", out, tbody + 4, value + shift)
                        else:
                            value = struct.unpack_from(">I", out, tbody + 4)[0]
                            struct.pack_into(">I", out, tbody + 4, value + shift)
    return bytes(out)


def build_hour(directory: Path, width: int, height: int, fps: int) -> tuple[Feed, float]:
    """A feed holding a one-hour stream (3600 one-second blocks + end marker); build seconds."""
    began = time.perf_counter()
    chunk = encode_test_stream(
        CHUNK, width=width, height=height, fps=fps, audio=False, title="hour", noise=True
    )
    header = StreamHeader.decode(chunk.header)
    scales = _timescales(header.init)
    feed = Feed.create(directory)
    feed.append([chunk.header])
    batch: list[bytes] = []
    for n in range(HOUR):
        rep, k = divmod(n, CHUNK)
        base = Segment.decode(chunk.segments[k])
        data = _shift_fragment(base.data, rep * CHUNK, n + 1, scales)
        batch.append(Segment(float(n), 1.0, header.start_time + n + 1, data).encode())
        if len(batch) == 200:
            feed.append(batch)
            batch = []
    batch.append(Segment(float(HOUR), 0.0, time.time(), b"", FLAG_END).encode())
    feed.append(batch)
    return feed, time.perf_counter() - began


def _ms(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return f"median {statistics.median(values) * 1e3:7.2f} ms  p95 {p95 * 1e3:7.2f} ms  max {values[-1] * 1e3:7.2f} ms"


async def bench_seeks(feed: Feed, seeks: int, browser: bool) -> None:
    rng = random.Random(1)
    targets = [rng.uniform(0, HOUR - 2) for _ in range(seeks)]
    async with PlayerServer(LocalFeedSource(feed)) as server, aiohttp.ClientSession() as http:
        began = time.perf_counter()
        async with http.get(server.url + "index.json") as response:
            info = await response.json()
        cold = time.perf_counter() - began
        began = time.perf_counter()
        async with http.get(server.url + "index.json") as response:
            await response.read()
        warm = time.perf_counter() - began
        print(
            f"timeline of {len(info['blocks'])} blocks: first load {cold * 1e3:.1f} ms, "
            f"then {warm * 1e3:.1f} ms"
        )
        rows = info["blocks"]

        http_times, direct_times = [], []
        for t in targets:
            began = time.perf_counter()
            # the page's lookup
            index = next(row["index"] for row in reversed(rows) if row["pts"] <= t)
            async with http.get(server.url + f"block/{index}.m4s") as response:
                body = await response.read()
            http_times.append(time.perf_counter() - began)
            began = time.perf_counter()
            direct = feed.get(index)[SEGMENT_HEADER_SIZE:]
            direct_times.append(time.perf_counter() - began)
            assert body == direct
        print(f"seek via server (lookup + HTTP block fetch), {seeks} random points:")
        print(f"  server   {_ms(http_times)}")
        print(f"  baseline {_ms(direct_times)}  (Feed.get of the same block, in process)")
        ratio = statistics.median(http_times) / statistics.median(direct_times)
        print(f"  ratio    {ratio:.1f}x the baseline; target <= 300 ms per seek")

        if browser:
            await bench_browser_seeks(server.url, targets[: min(20, seeks)])


async def bench_browser_seeks(url: str, targets: list[float]) -> None:
    from playwright.async_api import async_playwright

    from tests.test_viewer_page import CHROMIUM, CHROMIUM_ARGS

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page()
        await page.goto(url)
        await page.wait_for_function("window.player && player.video.readyState >= 3", timeout=20000)
        seeks, errors = [], []
        for t in targets:
            began = time.perf_counter()
            await page.evaluate(f"player.seekTo({t}, false)")
            await page.wait_for_function(
                "!player.video.seeking && player.video.readyState >= 3", timeout=10000, polling=5
            )
            seeks.append(time.perf_counter() - began)
            errors.append(abs(await page.evaluate("player.video.currentTime") - t))
        near = []
        for _ in targets:  # a short hop inside what is already buffered
            began = time.perf_counter()
            here = await page.evaluate("player.video.currentTime")
            await page.evaluate(f"player.seekTo({here + 0.5}, false)")
            await page.wait_for_function(
                "!player.video.seeking && player.video.readyState >= 3", timeout=10000, polling=5
            )
            near.append(time.perf_counter() - began)
        await browser.close()
    print(f"seek in headless Chromium (fetch + clear + append + land), {len(targets)} points:")
    print(f"  page     {_ms(seeks)}  landing error max {max(errors):.2f} s")
    print(f"  baseline {_ms(near)}  (seek within the buffer: no fetch)")
    print(f"  ratio    {statistics.median(seeks) / statistics.median(near):.1f}x the baseline")


def bench_export(feed_dir: Path, work: Path) -> None:
    out = work / "hour.mp4"
    began = time.perf_counter()
    result = export_feed(feed_dir, out)
    took = time.perf_counter() - began
    with av.open(str(out)) as container:
        duration = container.duration / 1e6
    print(
        f"export of {result.duration:.0f} s ({out.stat().st_size / 1e6:.1f} MB): {took:.2f} s "
        f"= {result.duration / took:.0f}x realtime (target >= 50x); output {duration:.1f} s"
    )

    with Feed.open(feed_dir) as feed:
        concat = work / "hour-fragmented.mp4"
        with open(concat, "wb") as sink:
            sink.write(StreamHeader.decode(feed.get(0)).init)
            for index in range(1, feed.length - 1):
                sink.write(feed.get(index)[SEGMENT_HEADER_SIZE:])
    began = time.perf_counter()
    with (
        av.open(str(concat)) as source,
        av.open(str(work / "plain.mp4"), "w", options={"movflags": "faststart"}) as sink,
    ):
        streams = {s.index: sink.add_stream_from_template(s) for s in source.streams}
        for packet in source.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                sink.mux(packet)
    plain = time.perf_counter() - began
    began = time.perf_counter()
    shutil.copyfile(concat, work / "copy.mp4")
    copy = time.perf_counter() - began
    print(
        f"  baseline PyAV remux of the same fragmented file: {plain:.2f} s = "
        f"{HOUR / plain:.0f}x realtime; ratio export/baseline {took / plain:.2f}"
    )
    print(f"  baseline raw file copy: {copy:.3f} s = {HOUR / copy:.0f}x realtime")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeks", type=int, default=100)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--size", default="320x180", help="WxH of the synthetic video")
    parser.add_argument("--fps", type=int, default=10)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        feed, built = build_hour(work / "feed", width, height, args.fps)
        mbps = feed.byte_length * 8 / HOUR / 1e6
        print(
            f"built a one-hour archive ({feed.length} blocks, {feed.byte_length / 1e6:.1f} MB, "
            f"{mbps:.2f} Mbit/s) in {built:.1f} s"
        )
        asyncio.run(bench_seeks(feed, args.seeks, not args.no_browser))
        feed.close()
        bench_export(work / "feed", work)


if __name__ == "__main__":
    main()
