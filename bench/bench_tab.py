"""The tab as a viewer: join time to the first frame and the broadcaster's upload with tabs.

1. Join: a live test-pattern stream (`streamer hub` + `streamer broadcast`, real processes on
   127.0.0.1) watched by two tabs that stay; then, alternately, a fresh tab (its own browser
   context) opens /watch/KEY and a fresh `viewer watch KEY` process starts. The tab's join is
   from page.goto to the first video frame presented (requestVideoFrameCallback: page load,
   hub, WebRTC, handshake, header and live block verified, MSE); the Python viewer's, measured
   as bench/bench_watch.py does, from process start to its URL (first frame playable). p50/p95.
2. Upload: a 30 s stream watched by N tabs (3 and 6), by 3 tabs and 3 Python viewers, and, as
   the same-run baseline, by 3 Python viewers alone; the broadcaster's bytes_up over the stream's byte_length (1.0 = one copy), and the
   share of the watchers' block bytes that came from other watchers.
Usage: python3 bench/bench_tab.py [--joins 10] [--size 640x360] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchutil import free_port, percentile, read_stats
from playwright.async_api import Browser, Page, async_playwright

PY = sys.executable
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
FIRST_FRAME = "window.swarmcast && swarmcast.stats && swarmcast.stats().first_frame_ms !== null"





async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Stream:
    """A hub and a live broadcast of the test pattern, as processes."""

    def __init__(self, root: Path, size: str, seconds: float | None) -> None:
        self.root = root
        port = free_port()
        self.hub = f"http://127.0.0.1:{port}"
        self.stats_path = root / "writer.json"
        self.procs = [subprocess.Popen(
            [PY, "-m", "streamer", "hub", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )]
        extra = ["--duration", str(seconds)] if seconds else []
        self.writer = subprocess.Popen(
            [PY, "-m", "streamer", "broadcast", "test", "--hub", self.hub, "--size", size,
             "--fps", "30", "--bitrate", "800k", "--feed", str(root / "feed"),
             "--stats", str(self.stats_path), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.procs.append(self.writer)

    async def started(self) -> str:
        await _until(lambda: read_stats(self.stats_path).get("length", 0) >= 3, 60, "the broadcast")
        return read_stats(self.stats_path)["key"]

    def viewer(self, key: str, name: str) -> tuple[subprocess.Popen, str, float]:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [PY, "-m", "viewer", "watch", key, "--hub", self.hub, "--no-browser", "--port", "0",
             "--store", str(self.root / name), "--timeout", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            proc.kill()
            raise SystemExit("viewer watch did not print its URL")
        return proc, url, time.perf_counter() - start

    def close(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)


async def _tab(browser: Browser, url: str) -> tuple[Page, float]:
    """Open a tab in its own context; seconds from goto to its first frame."""
    context = await browser.new_context()
    page = await context.new_page()
    start = time.time()
    await page.goto(url)
    await page.wait_for_function(FIRST_FRAME, timeout=30_000, polling=50)
    shown = await page.evaluate("performance.timeOrigin + swarmcast.stats().first_frame_ms")
    return page, shown / 1000 - start


async def joins(browser: Browser, size: str, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stream = Stream(Path(tmp), size, None)
        try:
            key = await stream.started()
            url = f"{stream.hub}/watch/{key}"
            stay = [await _tab(browser, url) for _ in range(2)]
            tab_joins, py_joins = [], []
            for i in range(rounds):
                page, elapsed = await _tab(browser, url)
                tab_joins.append(elapsed)
                await page.context.close()
                proc, _, py = await asyncio.to_thread(stream.viewer, key, f"v{i}")
                py_joins.append(py)
                await asyncio.to_thread(_stop, proc)
                print(f"join {i + 1}: tab {elapsed * 1000:.0f} ms, viewer watch {py * 1000:.0f} ms")
            for page, _ in stay:
                await page.context.close()
        finally:
            stream.close()
    t50, t95 = statistics.median(tab_joins), percentile(tab_joins, 0.95)
    p50, p95 = statistics.median(py_joins), percentile(py_joins, 0.95)
    print(f"tab join (goto -> first frame shown): p50 {t50 * 1000:.0f} ms, p95 {t95 * 1000:.0f} ms "
          "(target p95 <= 1500 ms)")
    print(f"viewer watch join (start -> first frame playable), same run: p50 {p50 * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms")


async def upload(browser: Browser, size: str, seconds: float, tabs: int, viewers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stream = Stream(Path(tmp), size, seconds)
        pages: list[Page] = []
        procs: list[tuple[subprocess.Popen, str]] = []
        try:
            key = await stream.started()
            for _ in range(tabs):
                pages.append((await _tab(browser, f"{stream.hub}/watch/{key}"))[0])
            for i in range(viewers):
                proc, url, _ = await asyncio.to_thread(stream.viewer, key, f"v{i}")
                procs.append((proc, url))
            await asyncio.to_thread(stream.writer.wait, seconds + 60)
            await asyncio.sleep(2)  # the last block reaches everyone
            w = read_stats(stream.stats_path)
            watchers = [await p.evaluate("swarmcast.stats()") for p in pages]
            for _, url in procs:
                watchers.append(await asyncio.to_thread(_get_json, url + "stats"))
        finally:
            for page in pages:
                await page.context.close()
            for proc, _ in procs:
                _stop(proc)
            stream.close()
    peers = sum(s["block_bytes_from_peers"] for s in watchers)
    writer = sum(s["block_bytes_from_writer"] for s in watchers)
    who = " + ".join(x for x in (f"{tabs} tabs" if tabs else "", f"{viewers} Python viewers" if viewers else "") if x)
    played = [s.get("current_time", 0) for s in watchers if "current_time" in s]
    print(f"{who}: broadcaster upload {w['bytes_up'] / w['byte_length']:.2f}x the stream "
          f"({w['bytes_up']} / {w['byte_length']} B); watchers' block bytes from other watchers "
          f"{peers / max(1, peers + writer):.0%}"
          + (f"; tabs played to {min(played):.1f}-{max(played):.1f} s" if played else ""))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=10)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            await joins(browser, args.size, args.joins)
            await upload(browser, args.size, args.seconds, 0, 3)
            await upload(browser, args.size, args.seconds, 3, 0)
            await upload(browser, args.size, args.seconds, 6, 0)
            await upload(browser, args.size, args.seconds, 3, 3)
        finally:
            await browser.close()


if __name__ == "__main__":
    asyncio.run(main())
