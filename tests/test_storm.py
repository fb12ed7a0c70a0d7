"""The signaling storm of issue 12, with real processes on 127.0.0.1: a hub, a broadcaster and
three `viewer watch` processes; tests/storm.py posts forged hello+evict, full, offer, answer,
reject and bye messages to every peer id it learns on the hub, every 5 s, first without the
stream key (an outsider: every message is dropped and counted) and then with it (an insider on
a named stream: the make-room rules bound what it costs). Every viewer keeps receiving blocks
without a gap more than a second longer than the longest gap measured on the same swarm without
a storm just before (at least the segment duration), and keeps all its neighbours; the first
viewer's page, playing in headless Chromium, never shows the same picture for more than 1.5 s (half a
second longer than its longest freeze without a storm, if that was over a second).
(With the rules of before, the outsider storm alone cut viewers off their neighbours.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.request
from pathlib import Path
from typing import BinaryIO

from playwright.async_api import Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--autoplay-policy=no-user-gesture-required"]
# In the page: the longest wall-clock time the video's currentTime stood still, sampled every
# 50 ms (a frame gap, whatever its cause: a stall, a seek to catch up).
WATCH_FRAMES = """() => {
  window.frameGap = {max: 0, last: performance.now(), time: player.video.currentTime};
  setInterval(() => {
    const now = performance.now(), g = window.frameGap;
    if (player.video.currentTime !== g.time) { g.time = player.video.currentTime; g.last = now; }
    g.max = Math.max(g.max, now - g.last);
  }, 50);
}"""
RESET_FRAMES = "() => { frameGap.max = 0; frameGap.last = performance.now(); }"
SEGMENT_S = 1.0
VIEWERS = 3
MAX_PEERS = 3  # few neighbours: every node is full, so every request to make room could bite
PHASE_S = 20.0  # each storm runs this long: four rounds


def _stats(url: str) -> dict:
    with urllib.request.urlopen(url + "stats", timeout=5) as resp:
        return json.loads(resp.read())


def _log_file(path: Path) -> BinaryIO:
    return open(path, "wb")  # noqa: SIM115 (the child process writes to it; closed with the test)


class Monitor:
    """Polls a viewer's /stats ten times a second and records the longest time between two
    increases of blocks_have (another process: there is nothing to await but its answers)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.max_gap = 0.0
        self.last: dict = {}
        self.min_peers = 99
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        have, since = -1, loop.time()
        while True:
            stats = await asyncio.to_thread(_stats, self.url)
            now = loop.time()
            self.last = stats
            self.min_peers = min(self.min_peers, stats["peers"])
            if stats["blocks_have"] != have:
                if have >= 0:
                    self.max_gap = max(self.max_gap, now - since)
                have, since = stats["blocks_have"], now
            else:
                self.max_gap = max(self.max_gap, now - since)
            await asyncio.sleep(0.1)

    def start(self) -> None:
        self.max_gap, self.min_peers = 0.0, 99
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_a_signaling_storm_with_and_without_the_key_leaves_every_viewer_playing(
    tmp_path: Path,
) -> None:
    py = sys.executable
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("SWARMCAST_ICE_SERVERS", None)
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            py, *args, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=_log_file(tmp_path / f"{len(procs)}.log"),
        )
        procs.append(proc)
        return proc

    async def line(proc: asyncio.subprocess.Process, timeout: float = 60.0) -> str:
        assert proc.stdout is not None
        return (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode().strip()

    async def armed_storm(*args: str) -> asyncio.subprocess.Process:
        """A storm that learns peer ids from now on and attacks when told to (SIGUSR1)."""
        proc = await start(
            "-m", "tests.storm", "--hub", hub_url, "--interval", "5", "--armed", *args
        )
        assert await line(proc) == "storm listening"
        return proc

    async def storm(proc: asyncio.subprocess.Process) -> dict:
        await page.evaluate(RESET_FRAMES)
        for m in monitors:
            m.start()
        proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(PHASE_S)  # the storm's duration: what is measured is its effect
        proc.send_signal(signal.SIGTERM)
        counts = json.loads(await line(proc, 30.0))
        for m in monitors:
            await m.stop()
        return counts

    playwright = await async_playwright().start()
    browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        hub = await start("-m", "streamer", "hub", "--port", "0")
        hub_url = (await line(hub)).split()[-1]
        writer = await start(
            "-m", "streamer", "broadcast", "test", "--hub", hub_url, "--size", "320x180",
            "--fps", "15", "--bitrate", "200k", "--segment", str(SEGMENT_S),
            "--duration", "600", "--feed", str(tmp_path / "feed"),
        )
        key = await line(writer)
        from streamer.core import crypto

        dk = crypto.discovery_key(bytes.fromhex(key)).hex()
        # Both storms listen while the viewers join (full nodes stop announcing themselves).
        outsider_storm = await armed_storm("--dk", dk)
        insider_storm = await armed_storm("--key", key)
        viewers = [
            await start(
                "-m", "viewer", "watch", key, "--hub", hub_url, "--no-browser", "--port", "0",
                "--store", str(tmp_path / f"v{i}"), "--max-peers", str(MAX_PEERS),
            )
            for i in range(VIEWERS)
        ]
        urls = [await line(v) for v in viewers]
        monitors = [Monitor(u) for u in urls]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            states = [await asyncio.to_thread(_stats, u) for u in urls]
            if all(s["peers"] >= 1 and s["blocks_have"] >= 3 for s in states):
                break
            assert loop.time() < deadline, f"the viewers never started: {states}"
            await asyncio.sleep(0.25)
        # The first viewer's page plays in headless Chromium throughout.
        page: Page = await browser.new_page()
        await page.goto(urls[0])
        await page.wait_for_function(
            "window.player && player.video.currentTime > 1", timeout=30_000, polling=100
        )
        await page.evaluate(WATCH_FRAMES)
        # The measure sees a freeze: with its viewer process stopped, the page runs dry.
        viewers[0].send_signal(signal.SIGSTOP)
        try:
            await page.wait_for_function("frameGap.max > 1000", timeout=20_000, polling=100)
        finally:
            viewers[0].send_signal(signal.SIGCONT)
        await page.evaluate(RESET_FRAMES)
        await page.wait_for_function(
            "(t => new Promise(r => setTimeout(() => r(player.video.currentTime > t + 1), 1500)))"
            "(player.video.currentTime)", timeout=30_000, polling=500,
        )
        # The same measure without a storm: what the encoder and the swarm give on this machine.
        await page.evaluate(RESET_FRAMES)
        for m in monitors:
            m.start()
        await asyncio.sleep(PHASE_S)
        for m in monitors:
            await m.stop()
        baseline = max(max(m.max_gap for m in monitors), SEGMENT_S)
        # The page's bound: a second, or what it showed without a storm when the machine is
        # slower than that, plus half a second (the old rules froze it for many seconds).
        page_base = await page.evaluate("frameGap.max")
        page_bound = max(page_base, 1000) + 500
        await page.evaluate(RESET_FRAMES)
        before = {m.url: m.last["peers"] for m in monitors}  # no storm may cost a neighbour
        outsider = await storm(outsider_storm)
        assert outsider["peers"] >= VIEWERS and outsider["posted"] > 0, outsider
        gaps = {m.url: round(m.max_gap, 2) for m in monitors}
        assert all(g <= baseline + 1.0 for g in gaps.values()), f"outsider storm: {gaps}"
        assert all(m.min_peers >= before[m.url] for m in monitors), (before, outsider)
        for m in monitors:
            assert m.last["signals_refused"] > 0, m.last
        page_gap = await page.evaluate("frameGap.max")
        assert page_gap <= page_bound, (
            f"the page froze in the outsider storm: {page_gap:.0f} ms ({page_base:.0f} without)"
        )
        await page.evaluate(RESET_FRAMES)

        before = {m.url: m.last["peers"] for m in monitors}
        insider = await storm(insider_storm)
        assert insider["peers"] >= VIEWERS and insider["posted"] > 0, insider
        gaps = {m.url: round(m.max_gap, 2) for m in monitors}
        assert all(g <= baseline + 1.0 for g in gaps.values()), f"insider storm: {gaps}"
        assert all(m.min_peers >= before[m.url] for m in monitors), (before, insider)
        page_gap = await page.evaluate("frameGap.max")
        assert page_gap <= page_bound, (
            f"the page froze in the insider storm: {page_gap:.0f} ms ({page_base:.0f} without)"
        )
        for proc in [hub, writer, *viewers]:
            assert proc.returncode is None
    finally:
        await browser.close()
        await playwright.stop()
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15.0)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
