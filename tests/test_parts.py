"""Format v2, parts as blocks: the block header (independent, back) and its cheap test, the grid
and the Timeline's seek through parts, a real broadcast cut into parts served as LL-HLS (playlist
parsed, media decoded by the ffmpeg command), blocking playlist reload, tampered parts rejected
by the feed like any block, the test pattern's machine-readable capture time, and a stream in
today's v1 format (tests/data/v1-feed) that still plays, serves HLS and exports."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import aiohttp
import av
import pytest
from playwright.async_api import async_playwright

from streamer.broadcast import Broadcaster, BroadcastOptions
from streamer.core.errors import ProofError
from streamer.core.feed import Feed
from streamer.core.wire import Request, RequestBlock, RequestUpgrade
from streamer.media.encoder import EncoderSettings
from streamer.media.format import (
    FLAG_END,
    FLAG_INDEPENDENT,
    Grid,
    Segment,
    SegmentHeader,
    StreamFormatError,
    StreamHeader,
    Timeline,
    is_independent,
)
from streamer.media.sources import TestPatternSource
from streamer.media.testpattern import TestPattern, read_time_code, time_code_bits
from tests.fixtures_viewer import ffmpeg_frames
from tests.test_e2e import decode_hls, spawn, stats_until  # noqa: F401 (spawn is a fixture)
from viewer.cli import main as viewer_main
from viewer.server import PlayerServer
from viewer.source import LocalFeedSource

V1_FIXTURE = Path(__file__).resolve().parent / "data" / "v1-feed"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"]
FPS = 30
SECONDS = 3.0


def part(pts: float, back: int, duration: float = 0.2) -> bytes:
    return Segment(pts, duration, 1.7e9 + pts, b"m", 0, back == 0, back).encode()


# ---------------------------------------------------------------- the block header


def test_a_part_header_says_whether_it_is_a_join_point_and_where_its_keyframe_is() -> None:
    key, dep = part(1.0, 0), part(1.2, 1)
    assert key[4] == 2 and key[5] == FLAG_INDEPENDENT and key[6:8] == b"\0\0"
    assert dep[5] == 0 and dep[6:8] == b"\x01\x00"
    assert SegmentHeader.decode(key).independent and SegmentHeader.decode(key).back == 0
    h = SegmentHeader.decode(dep)
    assert not h.independent and h.back == 1 and h.version == 2
    assert is_independent(key) and not is_independent(dep)
    end = Segment(2.0, 0.0, 0.0, b"", FLAG_END).encode()
    assert not is_independent(end) and not SegmentHeader.decode(end).independent
    assert not is_independent(b"SWCH\x02") and not is_independent(b"junk")
    # A v1 block (one GOP) is always a join point, whatever its reserved field holds.
    v1 = Segment(0.0, 1.0, 0.0, b"m", version=1).encode()
    assert v1[4] == 1 and v1[5] == 0 and is_independent(v1)
    assert SegmentHeader.decode(v1[:6] + b"\x07\x00" + v1[8:]).back == 0
    # An independent part cannot also depend on another one.
    with pytest.raises(StreamFormatError):
        SegmentHeader.decode(key[:6] + b"\x02\x00" + key[8:])
    with pytest.raises(StreamFormatError):
        SegmentHeader.decode(b"SWCS\x03" + key[5:])  # unknown version


def test_the_stream_header_carries_the_part_grid_and_v1_headers_still_read() -> None:
    header = StreamHeader(
        "t", 1.0, "video/mp4", 64, 36, 30.0, 1.0, init=b"INIT",
        part_duration=0.2, parts_per_segment=5,
    )
    back = StreamHeader.decode(header.encode())
    assert back.version == 2 and back.block_duration == 0.2 and back.grid == Grid(1.0, 0.2, 5)
    with Feed.open(V1_FIXTURE) as feed:
        v1 = StreamHeader.decode(feed.get(0))
    assert v1.version == 1 and v1.part_duration is None and v1.grid == Grid(1.0, 1.0, 1)
    assert StreamHeader.decode(v1.encode()) == v1  # a v1 header re-encodes as v1


def test_the_grid_places_parts_and_seeking_settles_in_a_few_header_reads() -> None:
    grid = Grid(1.0, 0.2, 5)
    assert grid.place(1) == (0.0, 0) and grid.place(7) == pytest.approx((1.2, 1))
    assert grid.index_at(0.0) == 1 and grid.index_at(1.25) == 7 and grid.index_at(9.99) == 50
    # 60 s of parts, but the stream restarted at block 101 with a 7.3 s gap in its timeline.
    timeline = Timeline()
    headers: dict[int, bytes] = {}
    for i in range(1, 301):
        k = i - 1
        shift = 7.3 if i > 100 else 0.0
        headers[i] = part(k * 0.2 + shift, k % 5)
    length = 301
    for t in (0.1, 13.5, 21.0, 40.05, 59.0 + 7.3):
        reads = 0
        index = Timeline.grid_index(t, length, grid)
        while True:
            timeline.add_block(index, headers[index])
            reads += 1
            step = timeline.seek_step(index, t, length)
            if step == index:
                break
            index = step
        h = timeline.get(index)
        # t in the gap of the restart: the part before it
        assert h.pts <= t < h.stop or (20.0 <= t < 27.3 and h.stop == pytest.approx(20.0))
        join = timeline.join_point(index)
        assert timeline.get(join) is None or timeline.get(join).independent
        assert SegmentHeader.decode(headers[join]).independent and index - join < 5
        assert reads <= (10 if 20.0 <= t < 27.3 else 4), (t, reads)
        timeline = Timeline()
    rows = Timeline().entries(12, grid)
    assert [r.independent for r in rows] == [True, False, False, False, False] * 2 + [True]
    assert [r.back for r in rows[:6]] == [0, 1, 2, 3, 4, 0]


# ---------------------------------------------------------------- a real stream of parts


@pytest.fixture(scope="module")
def parts_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("parts") / "feed"
    settings = EncoderSettings(320, 180, Fraction(FPS), 300_000, 1.0, "ultrafast", part=0.2)

    async def run() -> None:
        with Feed.create(directory) as feed:
            source = TestPatternSource(320, 180, FPS, live=False)
            options = BroadcastOptions(fast=True, duration=SECONDS)
            await Broadcaster(feed, source, settings, options).run()

    asyncio.run(run())
    return directory


def test_the_test_pattern_carries_a_readable_capture_time(parts_feed: Path) -> None:
    assert len(time_code_bits(1.5)) == 40
    wall = 1_780_000_123.456
    frame = TestPattern(320, 180).video_frame(0.0, wall)
    assert read_time_code(frame.to_ndarray(format="gray"), wall + 3600) == pytest.approx(wall)
    # It survives H.264 at 300 kbit/s: every decoded frame of the broadcast reads, in order.
    with Feed.open(parts_feed) as feed:
        data = StreamHeader.decode(feed.get(0)).init + b"".join(
            feed.get(i)[32:] for i in range(1, feed.length)
        )
    with av.open(io.BytesIO(data)) as container:
        times = [read_time_code(f.to_ndarray(format="gray"), time.time()) for f in container.decode(video=0)]
    assert len(times) == SECONDS * FPS and None not in times
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(abs(s - 1 / FPS) < 0.002 for s in steps)


def _parse_playlist(text: str) -> tuple[dict[str, str], list[str], list[tuple[str, str]]]:
    tags: dict[str, str] = {}
    parts: list[str] = []
    segments: list[tuple[str, str]] = []
    lines = text.strip().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-PART:"):
            parts.append(line.split(":", 1)[1])
        elif line.startswith("#EXTINF:"):
            segments.append((line, lines[i + 1]))
        elif line.startswith("#EXT") and ":" in line:
            tags.setdefault(line.split(":", 1)[0], line.split(":", 1)[1])
        elif line.startswith("#EXT"):
            tags[line] = ""
    return tags, parts, segments


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            return response.status, await response.text()


async def test_ll_hls_lists_parts_and_segments_that_ffmpeg_decodes(parts_feed: Path) -> None:
    with Feed.open(parts_feed) as feed:
        async with PlayerServer(LocalFeedSource(feed)) as server:
            status, text = await _get(server.url + "live.m3u8")
            assert status == 200
            tags, parts, segments = _parse_playlist(text)
            assert tags["#EXT-X-PART-INF"] == "PART-TARGET=0.200"
            assert "CAN-BLOCK-RELOAD=YES" in tags["#EXT-X-SERVER-CONTROL"]
            assert "PART-HOLD-BACK=0.600" in tags["#EXT-X-SERVER-CONTROL"]
            assert "#EXT-X-ENDLIST" in tags
            # Segments are runs of five parts from each independent part; parts are blocks.
            assert [uri for _, uri in segments] == ["run/1-5.m4s", "run/6-10.m4s", "run/11-15.m4s"]
            assert parts[0] == 'DURATION=0.200000,URI="block/1.m4s",INDEPENDENT=YES'
            assert parts[1] == 'DURATION=0.200000,URI="block/2.m4s"'
            assert len(parts) == 15
            status, _ = await _get(server.url + "run/2-5.m4s")
            assert status == 404  # a segment must start on an independent part
            for what in ("live.m3u8", "run/6-10.m4s"):
                cmd = ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name",
                       "-of", "json", server.url + what]
                if what.endswith(".m4s"):
                    continue  # a bare segment needs the init; the playlist gives it
                probe = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)
                assert probe.returncode == 0, probe.stderr
                codecs = {s["codec_name"] for s in json.loads(probe.stdout)["streams"]}
                assert codecs == {"h264", "aac"}
            assert await asyncio.to_thread(ffmpeg_frames, server.url + "live.m3u8") == SECONDS * FPS


async def test_blocking_reload_answers_when_the_asked_part_arrives(parts_feed: Path, tmp_path: Path) -> None:
    with Feed.open(parts_feed) as source_feed:
        blocks = [source_feed.get(i) for i in range(source_feed.length - 1)]  # no end marker
    with Feed.create(tmp_path / "live") as feed:
        feed.append(blocks[:8])  # header + parts 1..7: segment 2 has parts 0 and 1
        async with PlayerServer(LocalFeedSource(feed)) as server:
            _, text = await _get(server.url + "live.m3u8")
            tags, parts, segments = _parse_playlist(text)
            assert [uri for _, uri in segments] == ["run/1-5.m4s"]
            assert len(parts) == 7 and "#EXT-X-ENDLIST" not in tags
            assert tags["#EXT-X-PRELOAD-HINT"] == 'TYPE=PART,URI="block/8.m4s"'
            waiting = asyncio.create_task(_get(server.url + "live.m3u8?_HLS_msn=2&_HLS_part=3"))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # part 3 of segment 2 is block 9: not there yet
            feed.append(blocks[8:10])
            status, text = await asyncio.wait_for(waiting, 10)
            assert status == 200 and 'URI="block/9.m4s"' in text
            status, _ = await _get(server.url + "live.m3u8?_HLS_msn=9")
            assert status == 400  # too far in the future
            status, _ = await _get(server.url + "live.m3u8?_HLS_part=1")
            assert status == 400


def test_tampered_parts_are_rejected_like_any_block(parts_feed: Path, tmp_path: Path) -> None:
    with Feed.open(parts_feed) as writer:
        reader = Feed.open(tmp_path / "reader", key=writer.key, create=True)
        index = 7  # a dependent part
        assert not is_independent(writer.get(index))
        request = Request(
            id=1,
            fork=writer.fork,
            block=RequestBlock(index, 0),
            upgrade=RequestUpgrade(0, writer.length),
        )
        good = writer.proof(request)
        value = good.block.value
        for bad_value in (
            value[:5] + bytes([FLAG_INDEPENDENT]) + b"\0\0" + value[8:],  # claims a keyframe
            value[:-1] + bytes([value[-1] ^ 1]),  # one media bit
        ):
            bad = writer.proof(request)
            bad.block.value = bad_value
            with pytest.raises(ProofError):
                reader.verify_and_apply(bad)
            assert not reader.has(index)
        reader.verify_and_apply(good)
        assert reader.get(index) == value
        reader.close()


# ---------------------------------------------------------------- today's v1 streams


@pytest.fixture
def v1_copy(tmp_path: Path) -> Path:
    directory = tmp_path / "v1"
    shutil.copytree(V1_FIXTURE, directory)
    return directory


def test_a_v1_archive_still_exports(v1_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "v1.mp4"
    assert viewer_main(["export", str(v1_copy), str(out)]) == 0
    with av.open(str(out)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        assert container.duration / 1e6 == pytest.approx(3.0, abs=0.1)
    assert frames == 90
    assert viewer_main(["export", str(v1_copy), str(tmp_path / "mid.mp4"), "--from", "1.5"]) == 0
    with av.open(str(tmp_path / "mid.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 60  # from the segment at 1 s


async def test_a_v1_stream_still_plays_in_the_page_and_over_hls(v1_copy: Path) -> None:
    with Feed.open(v1_copy) as feed:
        async with PlayerServer(LocalFeedSource(feed)) as server:
            _, text = await _get(server.url + "live.m3u8")
            tags, parts, segments = _parse_playlist(text)
            assert parts == [] and "#EXT-X-PART-INF" not in tags
            assert [uri for _, uri in segments] == ["block/1.m4s", "block/2.m4s", "block/3.m4s"]
            _, body = await _get(server.url + "index.json")
            info = json.loads(body)
            assert info["version"] == 1 and info["part_duration"] == 1.0
            assert all(b["independent"] for b in info["blocks"])
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_ARGS
                )
                try:
                    page = await browser.new_page()
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(server.url)
                    await page.wait_for_function(
                        "window.player && player.video.currentTime > 1.5",
                        timeout=20_000,
                        polling=100,
                    )
                    assert errors == []
                finally:
                    await browser.close()


# ---------------------------------------------------------------- end to end, real processes


async def test_parts_end_to_end_hub_broadcaster_viewer_and_page(spawn, tmp_path: Path) -> None:  # noqa: F811
    py = sys.executable
    hub = await spawn("hub", py, "-m", "streamer", "hub", "--port", "0")
    hub_url = (await hub.line()).rsplit(" ", 1)[-1]
    writer = await spawn(
        "broadcaster", py, "-m", "streamer", "broadcast", "test", "--hub", hub_url,
        "--size", "320x180", "--fps", "15", "--bitrate", "300k", "--part", "0.2",
        "--duration", "40", "--feed", str(tmp_path / "feed"),
    )
    key = await writer.line()
    viewer = await spawn(
        "viewer", py, "-m", "viewer", "watch", key, "--hub", hub_url, "--no-browser",
        "--port", "0", "--store", str(tmp_path / "v"),
    )
    url = await viewer.line()
    await stats_until(url, lambda s: s["blocks_have"] >= 5 and s["peers"] >= 1)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(url)
            await page.wait_for_function(
                "window.player && player.state.ready && player.video.currentTime > 0",
                timeout=30_000,
                polling=100,
            )
            start = await page.evaluate("player.video.currentTime")
            await page.wait_for_function(
                f"player.video.currentTime > {start + 3}", timeout=30_000, polling=100
            )
            info = await page.evaluate(
                """() => ({
                  part: player.state.info.part_duration,
                  dependent: player.state.rows.filter((r) => r && r.known && !r.independent).length,
                  behind: player.state.liveEdge - player.video.currentTime,
                  frames: player.video.getVideoPlaybackQuality().totalVideoFrames,
                })"""
            )
            assert errors == []
        finally:
            await browser.close()
    assert info["part"] == pytest.approx(0.2)
    assert info["dependent"] >= 10  # it appended dependent parts as they came
    assert info["frames"] >= 3 * 15
    assert info["behind"] < 4.0  # it followed the live edge (a loose bound: the machine is shared)
    # An HLS client reads the viewer's LL-HLS playlist while the stream is live.
    frames = await asyncio.to_thread(decode_hls, url + "live.m3u8", 15)
    assert frames == 15


async def test_resuming_a_v1_stream_goes_on_in_v1(tmp_path: Path) -> None:
    from streamer.broadcast import plan_settings, resume_point
    from streamer.core.errors import UsageError

    settings = EncoderSettings(160, 96, Fraction(30), 300_000, 1.0, "ultrafast")
    with Feed.create(tmp_path / "v2") as feed:
        await Broadcaster(
            feed,
            TestPatternSource(160, 96, 30, live=False),
            settings,
            BroadcastOptions(fast=True, duration=2.0),
        ).run()
        blocks = [feed.get(i) for i in range(feed.length)]
    # The same stream as today's code wrote it: v1 header and v1 blocks.
    header = StreamHeader.decode(blocks[0])
    header.version, header.part_duration, header.parts_per_segment = 1, None, None
    old = []
    for block in blocks[1:]:
        s = Segment.decode(block)
        s.version = 1
        old.append(s.encode())
    with Feed.create(tmp_path / "v1") as feed:
        feed.append([header.encode(), *old])
        resume = resume_point(feed)
        assert resume is not None and resume.header.version == 1
        with pytest.raises(UsageError, match="format v1"):
            plan_settings(
                TestPatternSource(160, 96, 30, live=False), BroadcastOptions(part=0.2), resume
            )
        again = plan_settings(TestPatternSource(160, 96, 30, live=False), resume=resume)
        assert again.part is None
        await Broadcaster(
            feed,
            TestPatternSource(160, 96, 30, live=False),
            again,
            BroadcastOptions(fast=True, duration=1.0),
        ).run()
        added = [feed.get(i) for i in range(len(old) + 1, feed.length)]
    assert [b[4] for b in added] == [1, 1]  # one v1 GOP block, then a v1 end marker
    assert SegmentHeader.decode(added[0]).discontinuity and SegmentHeader.decode(added[-1]).end
