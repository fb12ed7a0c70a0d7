"""The player page in Debian's headless Chromium over a real player server and a real Feed that
the test appends to live: it really plays, starts near the live edge, catches up after a stall,
seeks (its own timeline, the video element's native seeking), returns to live, shows stats, and
steps over blocks that no peer holds (the server answers 410 with where the stream goes on)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Page, async_playwright

from streamer.core.feed import Feed
from tests.fixtures_viewer import (
    EncodedStream,
    HolesSource,
    encode_test_stream,
    sparse_copy,
    write_feed,
)
from viewer.server import PlayerServer
from viewer.source import LocalFeedSource

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
SECONDS = 40
PRELOADED = 4  # segments in the feed before the page opens


@pytest.fixture(scope="module")
def stream() -> EncodedStream:
    return encode_test_stream(SECONDS)


@dataclass
class Session:
    feed: Feed
    server: PlayerServer
    page: Page
    stream: EncodedStream

    @property
    def live_edge(self) -> float:
        """End of the newest appended segment: the edge the page should stay close to."""
        return float(self.feed.length - 1)

    async def js(self, expression: str):
        return await self.page.evaluate(expression)

    async def until(self, expression: str, timeout: float = 10.0) -> None:
        await self.page.wait_for_function(expression, timeout=timeout * 1000, polling=100)

    async def settled(self) -> None:
        """Wait until the page has finished seeking and is playing again."""
        await self.until(
            "!player.video.seeking && player.video.readyState >= 3 && !player.video.paused"
        )

    async def current_time(self) -> float:
        return float(await self.js("player.video.currentTime"))

    async def frames(self) -> int:
        return int(await self.js("player.video.getVideoPlaybackQuality().totalVideoFrames"))


async def _appender(feed: Feed, stream: EncodedStream, running: asyncio.Event) -> None:
    """Append one segment per second, like a broadcaster; holds back while `running` is clear."""
    while feed.length - 1 < len(stream.segments):
        await asyncio.sleep(1.0)
        await running.wait()
        feed.append([stream.segments[feed.length - 1]])


@pytest.fixture
async def open_page(stream: EncodedStream, tmp_path: Path) -> AsyncIterator:
    tasks: list[asyncio.Task] = []
    cleanup: list = []

    async def start(
        blocks: list[bytes],
        *,
        live: bool,
        query: str = "",
        running: asyncio.Event | None = None,
        chromium_args: tuple[str, ...] = (),
        holes: range = range(0),
    ) -> Session:
        feed = write_feed(tmp_path / f"feed{len(cleanup)}", blocks)
        source = LocalFeedSource(feed)
        if holes:
            held = [i for i in range(len(blocks)) if i not in holes]
            writer = feed
            feed = sparse_copy(writer, tmp_path / f"sparse{len(cleanup)}", held)
            writer.close()
            source = HolesSource(feed)
        server = PlayerServer(source)
        await server.start()
        playwright = await async_playwright().start()
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *chromium_args]
        )
        cleanup.append((feed, server, playwright, browser))
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        if live:
            if running is None:
                running = asyncio.Event()
                running.set()
            tasks.append(asyncio.create_task(_appender(feed, stream, running)))
        await page.goto(server.url + query)
        session = Session(feed, server, page, stream)
        await session.until(
            "window.player && player.state.ready && player.video.currentTime > 0", timeout=15
        )
        assert errors == []
        return session

    yield start
    for task in tasks:
        task.cancel()
    for feed, server, playwright, browser in cleanup:
        await browser.close()
        await playwright.stop()
        await server.stop()
        feed.close()


def _live_blocks(stream: EncodedStream) -> list[bytes]:
    return [stream.header, *stream.segments[:PRELOADED]]


async def test_the_page_plays_the_stream_at_the_live_edge(open_page, stream: EncodedStream) -> None:
    s = await open_page(_live_blocks(stream), live=True)
    assert await s.js("MediaSource.isTypeSupported(player.state.info.mime)")
    start_time, start_frames = await s.current_time(), await s.frames()
    delays = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        delays.append(s.live_edge - await s.current_time())
    assert await s.current_time() > start_time + 3  # it plays, in real time
    assert await s.frames() > start_frames + 25  # frames are really decoded
    assert max(delays) <= 2.0, delays
    assert min(delays) >= 0.0, delays


async def test_the_page_catches_up_after_a_stall(open_page, stream: EncodedStream) -> None:
    running = asyncio.Event()
    running.set()
    s = await open_page(_live_blocks(stream), live=True, running=running)
    running.clear()  # the broadcaster stalls: the player drains its buffer and waits
    length = s.feed.length
    # Wait for the page to count the stall itself (its "waiting" handler), not merely for the
    # element to look starved: the burst must not race the handler.
    await s.until("player.state.stalls >= 1", timeout=8)
    s.feed.append(list(stream.segments[length - 1 : length + 4]))  # then a burst arrives
    running.set()
    behind = s.live_edge - await s.current_time()
    assert behind > 3.0
    await s.until(f"{s.live_edge} - player.video.currentTime <= 2.0", timeout=8)
    await s.settled()
    # Running dry at the live edge made the page keep a little more in hand from then on.
    assert await s.js("player.state.stalls") >= 1
    assert await s.js("player.hold()") == pytest.approx(1.2 + 0.5)  # 1 s blocks: half a block


async def test_seeking_lands_near_the_target_and_live_returns_to_the_edge(
    open_page, stream: EncodedStream
) -> None:
    s = await open_page([stream.header, *stream.segments[:20]], live=True)
    await s.js("player.seekTo(5.3, false)")
    await s.settled()
    assert abs(await s.current_time() - 5.3) < 1.0
    assert await s.js("player.state.followLive") is False
    frames = await s.frames()
    await s.until(f"player.video.getVideoPlaybackQuality().totalVideoFrames > {frames + 5}")

    await s.js("player.video.currentTime = 12.6")  # what the native controls do
    await s.settled()
    assert abs(await s.current_time() - 12.6) < 1.0
    await asyncio.sleep(0.5)  # it keeps playing from there rather than jumping back to live
    assert 12.0 < await s.current_time() < 14.5

    await s.page.click("#live")
    await s.settled()
    await s.until(f"{s.live_edge} - player.video.currentTime <= 2.0", timeout=5)
    assert await s.js("player.state.followLive") is True
    await s.until("document.getElementById('live').classList.contains('at-live')", timeout=3)


async def test_clicking_the_timeline_seeks_there(open_page, stream: EncodedStream) -> None:
    s = await open_page([stream.header, *stream.segments[:20]], live=True)
    box = await s.page.locator("#timeline").bounding_box()
    assert box is not None
    edge = float(await s.js("player.state.liveEdge"))
    await s.page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
    # The click starts an asynchronous seek (fetch, append, land): wait for it to land rather
    # than reading the position while the old one still plays.
    await s.until(f"Math.abs(player.video.currentTime - {edge * 0.25}) < 1.0", timeout=10)
    await s.settled()
    assert abs(await s.current_time() - edge * 0.25) < 1.0


async def test_a_finished_stream_plays_from_its_start_and_shows_stats(
    open_page, stream: EncodedStream
) -> None:
    s = await open_page([stream.header, *stream.segments[:10], stream.end_marker()], live=False)
    assert await s.current_time() < 2.0
    await s.settled()
    await s.until("document.getElementById('s-blocks').textContent === '12 / 12'")
    assert await s.page.text_content("#live") == "ENDED"
    assert (await s.page.text_content("#s-peers")) == "0"
    assert (await s.page.text_content("#s-safe")) == "–"  # no swarm: no copies to count
    await s.js("player.video.currentTime = 9.5")
    await s.until("player.video.ended", timeout=5)


async def test_a_finished_stream_whose_start_no_peer_holds_plays_from_the_first_block_held(
    open_page, stream: EncodedStream
) -> None:
    blocks = [stream.header, *stream.segments[:10], stream.end_marker()]
    s = await open_page(blocks, live=False, holes=range(1, 5))  # the fixture waits for playback
    assert await s.current_time() >= 4.0  # blocks 5.. (one 1 s GOP each) hold 4 s on
    assert "held by no peer" in (await s.page.text_content("#status") or "")
    async with aiohttp.ClientSession() as http, http.get(s.server.url + "block/2.m4s") as r:
        assert r.status == 410 and r.headers["X-Goes-On-At"] == "5"
    await s.js("player.video.currentTime = 9.5")
    await s.until("player.video.ended", timeout=5)


async def test_playback_steps_over_a_hole_no_peer_holds(open_page, stream: EncodedStream) -> None:
    blocks = [stream.header, *stream.segments[:12], stream.end_marker()]
    s = await open_page(blocks, live=False, holes=range(4, 8))
    assert await s.current_time() < 2.0
    # Blocks 1-3 play; 4-7 (3-7 s) are held by no one; playback goes on at 8 (7 s) and ends.
    await s.until("player.video.currentTime > 7.5", timeout=25)
    assert "held by no peer" in (await s.page.text_content("#status") or "")
    assert await s.js("player.state.skipped") == 1
    await s.until("player.video.ended", timeout=15)


async def test_at_starts_playback_at_that_time(open_page, stream: EncodedStream) -> None:
    s = await open_page([stream.header, *stream.segments[:12]], live=True, query="?at=6")
    await s.settled()
    assert 5.5 < await s.current_time() < 7.5


async def test_a_full_media_buffer_is_evicted_and_playback_goes_on(open_page) -> None:
    # Chromium's MSE quota cut to 1 MB; each noisy block is ~0.35 MB, so a few seconds fill it.
    noisy = encode_test_stream(12, width=320, height=180, noise=True, audio=False)
    limits = ("--mse-video-buffer-size-limit-mb=1", "--mse-audio-buffer-size-limit-mb=1")
    s = await open_page(
        [noisy.header, *noisy.segments, noisy.end_marker()], live=False, chromium_args=limits
    )
    await s.until("player.video.currentTime > 7", timeout=20)
    assert "error" not in (await s.page.text_content("#status") or "")
    assert await s.js("player.state.quotaErrors") > 0
    assert await s.js("player.video.buffered.start(0)") > 2.0  # early blocks were evicted
