"""Media held by no peer in the HLS playlist: a real broadcast of 0.2 s parts, copied without two
runs of blocks (as history nobody kept), served by the player server. Once a run has been held by
no one for UNAVAILABLE_S, the playlist marks the segments it touches #EXT-X-GAP and their parts
from the first missing one GAP=YES (a finished stream's playlist waits for that; a live one shows
it on a later reload), and fetching them anyway answers 410 with where the stream goes on.
hls.js (npm, tests/hlsjs) plays such a stream in headless Chromium from start to end without
asking for a gap, from a test source and from a real viewer process; FFmpeg, which ignores the
tag, plays on past the 410s."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import async_playwright

from streamer.broadcast import Broadcaster, BroadcastOptions
from streamer.core.feed import Feed
from streamer.media.encoder import EncoderSettings
from streamer.media.sources import TestPatternSource
from tests.fixtures_viewer import HolesSource, ffmpeg_frames, sparse_copy, write_feed
from tests.test_e2e import spawn, stats_until  # noqa: F401 (spawn is a fixture)
from viewer.server import PlayerServer

PY = sys.executable
HLS_JS = Path(__file__).parent / "hlsjs" / "node_modules" / "hls.js" / "dist" / "hls.min.js"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--autoplay-policy=no-user-gesture-required"]
FPS = 10
SECONDS = 8
# Segments are runs of five 0.2 s parts: blocks 1-5, 6-10, ... 36-40; block 41 is the end marker.
WHOLE = range(11, 16)  # all of the third segment (2-3 s)
TAIL = range(23, 25)  # parts 3-4 of the fifth (4.4-4.8 s); its part 5 decodes from them
GAP_SEGMENTS = ["run/11-15.m4s", "run/21-25.m4s"]


@pytest.fixture(scope="module")
def broadcast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Feed]:
    directory = tmp_path_factory.mktemp("gaps") / "feed"
    settings = EncoderSettings(320, 180, Fraction(FPS), 300_000, 1.0, "ultrafast", part=0.2)

    async def run() -> None:
        with Feed.create(directory) as feed:
            source = TestPatternSource(320, 180, FPS, live=False)
            await Broadcaster(feed, source, settings, BroadcastOptions(fast=True, duration=SECONDS)).run()

    asyncio.run(run())
    with Feed.open(directory) as feed:
        assert feed.length == SECONDS * 5 + 2
        yield feed


def _holes_copy(broadcast: Feed, directory: Path, length: int | None = None) -> HolesSource:
    """The broadcast's first `length` blocks (all by default) signed anew, copied without the
    holes."""
    length = broadcast.length if length is None else length
    with write_feed(directory / "writer", [broadcast.get(i) for i in range(length)]) as writer:
        held = [i for i in range(length) if i not in WHOLE and i not in TAIL]
        return HolesSource(sparse_copy(writer, directory / "copy", held))


async def _get(url: str) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text(errors="replace"), dict(response.headers)


def _marks(playlist: str) -> tuple[list[str], list[int]]:
    """The segment URIs after #EXT-X-GAP, and the blocks whose part says GAP=YES."""
    lines = playlist.splitlines()
    gaps = [lines[i + 2] for i, line in enumerate(lines) if line == "#EXT-X-GAP"]
    assert all(lines[lines.index(uri) - 1].startswith("#EXTINF:") for uri in gaps)
    parts = [
        int(line.split('URI="block/')[1].split(".")[0])
        for line in lines
        if line.startswith("#EXT-X-PART:") and "GAP=YES" in line
    ]
    return gaps, parts


async def test_a_finished_stream_marks_what_no_peer_holds_as_gaps(
    broadcast: Feed, tmp_path: Path
) -> None:
    source = _holes_copy(broadcast, tmp_path)
    async with PlayerServer(source) as server:
        status, text, _ = await _get(server.url + "live.m3u8")
        assert status == 200 and text.rstrip().endswith("#EXT-X-ENDLIST")
        gaps, parts = _marks(text)
        assert gaps == GAP_SEGMENTS
        # The newest four segments list their parts (21-40): the fifth from its third part on.
        assert parts == [23, 24, 25]
        assert text.count("#EXTINF:") == SECONDS  # a gap is still a segment of the timeline
        for uri, goes_on in [("run/11-15.m4s", "16"), ("block/12.m4s", "16"),
                             ("run/21-25.m4s", "25"), ("block/24.m4s", "25")]:
            status, body, headers = await _get(server.url + uri)
            assert status == 410 and headers["X-Goes-On-At"] == goes_on, (uri, body)
        status, _, _ = await _get(server.url + "run/16-20.m4s")
        assert status == 200


async def test_ffmpeg_which_ignores_the_tag_plays_on_past_the_410s(
    broadcast: Feed, tmp_path: Path
) -> None:
    async with PlayerServer(_holes_copy(broadcast, tmp_path)) as server:
        frames = await asyncio.to_thread(ffmpeg_frames, server.url + "live.m3u8")
    assert frames == (SECONDS - len(GAP_SEGMENTS)) * FPS  # all but the two gaps' segments


async def test_a_live_playlist_marks_a_gap_once_it_stayed_one(
    broadcast: Feed, tmp_path: Path
) -> None:
    source = _holes_copy(broadcast, tmp_path, length=30)  # live: no end marker yet
    async with PlayerServer(source) as server:
        _, text, _ = await _get(server.url + "live.m3u8")
        assert "#EXT-X-ENDLIST" not in text
        assert _marks(text) == ([], [])  # the neighbours' announcements may still come
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            _, text, _ = await _get(server.url + "live.m3u8")
            if _marks(text)[0]:
                break
            assert asyncio.get_running_loop().time() < deadline, text
            await asyncio.sleep(0.2)  # as a live client reloads
        # Six segments, the newest four with their parts (11-29): the third's all are gaps.
        assert _marks(text) == (GAP_SEGMENTS, [*WHOLE, 23, 24, 25])


async def _hls_js_plays(url: str) -> list[str]:
    """Play `url`live.m3u8 with hls.js in headless Chromium from the start to the end (failing
    on a fatal hls.js error); the paths of the media it fetched."""
    playwright = await async_playwright().start()
    browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        page = await browser.new_page()
        fetched: list[str] = []
        page.on("request", lambda r: fetched.append(r.url.removeprefix(url)))
        await page.goto(url + "stats")  # any page of the server's origin
        await page.set_content("<video muted></video>")
        await page.add_script_tag(path=str(HLS_JS))
        await page.evaluate(
            """() => {
              window.fatal = null
              const video = document.querySelector('video')
              const hls = new Hls({startPosition: 0})
              hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) window.fatal = d.details })
              hls.loadSource('/live.m3u8')
              hls.attachMedia(video)
              video.play()
            }"""
        )
        await page.wait_for_function(
            "fatal !== null || document.querySelector('video').ended", timeout=60_000
        )
        assert await page.evaluate("fatal") is None
        assert await page.evaluate("document.querySelector('video').currentTime") > SECONDS - 1
    finally:
        await browser.close()
        await playwright.stop()
    runs = [u for u in fetched if u.startswith(("run/", "block/"))]
    # The last segment comes whole or as parts (hls.js may load the parts listed).
    assert "run/16-20.m4s" in runs and {"run/36-40.m4s", "block/40.m4s"} & set(runs), runs
    return runs


GAP_URIS = {*GAP_SEGMENTS, *(f"block/{b}.m4s" for b in [*WHOLE, *TAIL])}


async def test_hls_js_plays_across_the_gaps_without_fetching_them(
    broadcast: Feed, tmp_path: Path
) -> None:
    async with PlayerServer(_holes_copy(broadcast, tmp_path)) as server:
        assert not set(await _hls_js_plays(server.url)) & GAP_URIS


async def test_a_viewer_marks_what_its_swarm_lacks_and_hls_js_plays_across(
    broadcast: Feed, tmp_path: Path, spawn  # noqa: F811
) -> None:
    """The same through real processes: a hub, a seeder holding the copy with holes, and a
    `viewer watch` whose replicator learns from the seeder's announcements what no one holds."""
    source = _holes_copy(broadcast, tmp_path)
    source.feed.close()
    hub = await spawn("hub", PY, "-m", "streamer", "hub", "--port", "0")
    hub_url = (await hub.line()).rsplit(" ", 1)[-1]
    seeder = await spawn("seed", PY, "-m", "viewer", "seed", str(tmp_path / "copy"), "--hub", hub_url)
    key = await seeder.line()
    viewer = await spawn("watch", PY, "-m", "viewer", "watch", key, "--hub", hub_url,
                         "--no-browser", "--port", "0", "--store", str(tmp_path / "viewer"))
    url = await viewer.line()
    await stats_until(url, lambda s: s["ended"] and s["peers"] >= 1)
    async with aiohttp.ClientSession() as http, http.get(url + "live.m3u8") as response:
        text = await response.text()
    assert _marks(text) == (GAP_SEGMENTS, [23, 24, 25]), text
    assert not set(await _hls_js_plays(url)) & GAP_URIS
