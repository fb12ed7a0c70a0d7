"""End to end through the commands, every node its own process on 127.0.0.1: `streamer hub`,
`streamer broadcast test --hub`, three `viewer watch` processes that all get blocks (their /stats)
and play in headless Chromium, a `viewer archive --follow` interrupted with SIGINT and resumed,
a fourth viewer that joins after the broadcaster left and gets the stream from the others (also
over HLS), `viewer export` of the archive to a playable MP4, and `viewer seed` serving it to a
newcomer once every viewer is gone."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import av
import pytest
from playwright.async_api import async_playwright

STREAM_SECONDS = 12.0
FPS = 15
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


class Proc:
    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    async def line(self, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            err = await self.stderr()
            raise AssertionError(f"{self.name} ended without output: {err}")
        return raw.decode().strip()

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()

    async def wait(self, timeout: float) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., asyncio.Future]]:
    procs: list[Proc] = []

    async def start(name: str, *args: str) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")},
        )
        p = Proc(proc, name)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.signal(signal.SIGTERM)
    for p in procs:
        try:
            await p.wait(10.0)
        except asyncio.TimeoutError:
            p.proc.kill()
            await p.proc.wait()


async def page_plays(url: str) -> float:
    """Open the player page in headless Chromium; the video time it reached once it advanced."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(url)
            await page.wait_for_function(
                "window.player && player.video.currentTime > 1", timeout=20_000, polling=100
            )
            assert errors == []
            return float(await page.evaluate("player.video.currentTime"))
        finally:
            await browser.close()


def decode_hls(url: str, frames: int) -> int:
    """Decode up to `frames` video frames of an HLS playlist; how many decoded."""
    with av.open(url, options={"live_start_index": "0"}) as container:
        decoded = 0
        for _ in container.decode(video=0):
            decoded += 1
            if decoded == frames:
                break
    return decoded


def get_stats(url: str) -> dict:
    with urllib.request.urlopen(url + "stats", timeout=5) as resp:
        return json.loads(resp.read())


async def stats_until(url: str, predicate: Callable[[dict], bool], timeout: float = 30.0) -> dict:
    """Poll a viewer's /stats (another process: there is nothing to await but its answers)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        stats = await asyncio.to_thread(get_stats, url)
        if predicate(stats):
            return stats
        if loop.time() > deadline:
            raise AssertionError(f"viewer at {url} never got there: {stats}")
        await asyncio.sleep(0.25)


async def test_a_stream_reaches_viewers_outlives_its_broadcaster_and_archives(spawn, tmp_path):
    py = sys.executable
    hub = await spawn("hub", py, "-m", "streamer", "hub", "--port", "0")
    hub_url = (await hub.line()).rsplit(" ", 1)[-1]
    writer = await spawn(
        "broadcaster",
        py,
        "-m",
        "streamer",
        "broadcast",
        "test",
        "--hub",
        hub_url,
        "--size",
        "320x180",
        "--fps",
        str(FPS),
        "--bitrate",
        "300k",
        "--duration",
        str(STREAM_SECONDS),
        "--feed",
        str(tmp_path / "feed"),
    )
    key = await writer.line()
    assert len(key) == 64

    def watch(i: int, *extra: str) -> asyncio.Future:
        return spawn(
            f"viewer{i}",
            py,
            "-m",
            "viewer",
            "watch",
            key,
            "--hub",
            hub_url,
            "--no-browser",
            "--port",
            "0",
            "--store",
            str(tmp_path / f"v{i}"),
            *extra,
        )

    archive_dir = tmp_path / "archive"
    archive_args = (
        py,
        "-m",
        "viewer",
        "archive",
        key,
        str(archive_dir),
        "--hub",
        hub_url,
        "--follow",
    )
    archiver = await spawn("archive", *archive_args)
    # The archive is the broadcaster's first neighbour, so its first run fetches the stream's
    # start from it (the viewers hold only what they play, from where they joined).
    assert archiver.proc.stderr is not None
    while b"connected to" not in await asyncio.wait_for(archiver.proc.stderr.readline(), 30):
        pass
    viewers = [await watch(i) for i in range(3)]
    urls = [await v.line() for v in viewers]
    assert all(u.startswith("http://127.0.0.1:") for u in urls)
    for url in urls:
        await stats_until(url, lambda s: s["blocks_have"] >= 3 and s["peers"] >= 1)

    # Interrupted while the stream goes on (before the browser, whose start under load could
    # outlast the stream and let the archive complete): it fetched the start, the viewers hold
    # the rest from where they joined.
    archiver.signal(signal.SIGINT)
    assert await archiver.wait(15.0) == 130
    assert "run the same command again to resume" in await archiver.stderr()

    # A browser plays the live stream from a viewer's page.
    assert await page_plays(urls[0]) > 1

    assert await writer.wait(STREAM_SECONDS + 30.0) == 0
    # Every viewer followed the stream to its end marker.
    for url in urls:
        final = await stats_until(url, lambda s: s["ended"], 20.0)
        assert final["length"] >= STREAM_SECONDS

    late = await watch(3, "--at", "2.5")
    late_url = await late.line()
    late_stats = await stats_until(late_url, lambda s: s["blocks_have"] >= 2)
    assert not late_stats["writer_connected"]
    assert late_stats["blocks_from_peers"] >= 1 and late_stats["blocks_from_writer"] == 0
    # 0.1 s parts are 2 frames at 15 fps: eight per 1 s segment (the last one frame), so 2.5 s
    # is in part 20, whose keyframe is part 17.
    assert late_stats["playhead"] == 17
    # HLS players get the same stream through the late viewer (FFmpeg's HLS demuxer here).
    frames = await asyncio.to_thread(decode_hls, late_url + "live.m3u8", 2 * FPS)
    assert frames == 2 * FPS

    # Resume the archive from the viewers alone (its first run fetched the start).
    resumed = await spawn("archive again", *archive_args, "--timeout", "20")
    code = await resumed.wait(60.0)
    err = await resumed.stderr()
    assert code == 0, err
    assert "Traceback" not in err

    exporter = await spawn(
        "export", py, "-m", "viewer", "export", str(archive_dir), str(tmp_path / "out.mp4")
    )
    assert await exporter.wait(60.0) == 0, await exporter.stderr()
    with av.open(str(tmp_path / "out.mp4")) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= (STREAM_SECONDS - 1) * FPS

    for v in [*viewers, late]:
        v.signal(signal.SIGTERM)
        assert await v.wait(15.0) == 0

    # With every viewer gone, a seeder keeps the archive available to a newcomer.
    seeder = await spawn("seed", py, "-m", "viewer", "seed", str(archive_dir), "--hub", hub_url)
    assert await seeder.line() == key
    newcomer = await watch(4)
    new_stats = await stats_until(await newcomer.line(), lambda s: s["blocks_have"] >= 2)
    assert new_stats["blocks_from_peers"] >= 2 and new_stats["peers"] == 1
    seeder.signal(signal.SIGINT)
    assert await seeder.wait(15.0) == 0
