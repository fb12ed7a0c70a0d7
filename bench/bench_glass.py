"""Glass-to-glass latency: from the moment the `test` source captures a frame to the moment the
viewer's page presents it in headless Chromium, p50/p95, beside the delivery delay (a block's
wall clock, stamped when the broadcaster appended it, to its arrival in the page).

Everything is real and on 127.0.0.1: `streamer hub`, `streamer broadcast test --part P`, four
`viewer watch` processes, and Chromium (playwright, /usr/bin/chromium) on the page of the last
viewer to join. The test pattern codes each frame's capture time (ms) in a strip of black/white
blocks (streamer.media.testpattern); the page draws every presented frame
(requestVideoFrameCallback) to a canvas, and its pixels are decoded here with read_time_code.

Runs twice in one go: parts (default --part 0.1, the broadcaster's) and the same-run baseline
with --part equal to the segment (one block per GOP, the behaviour before parts). Target: parts p95 <= 1.0 s.
Usage: python3 bench/bench_glass.py [--seconds 30] [--size 640x360] [--part 0.1] [--pages 1]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import free_port, percentile, read_stats
from playwright.async_api import async_playwright

from streamer.media.parts import DEFAULT_PART
from streamer.media.testpattern import read_time_code, time_code_strip

PY = sys.executable
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
VIEWERS = 4
WARMUP_S = 8.0  # after the page starts playing: let it settle before measuring

# Installed in the page before its own script: records each presented frame's strip row and
# display time, and each block's wall clock and arrival.
PAGE_PROBE = r"""
(() => {
  const probe = { frames: [], blocks: [], row: -1 };
  window.__glass = probe;
  const realFetch = window.fetch.bind(window);
  window.fetch = async (...args) => {
    const res = await realFetch(...args);
    const url = String(args[0]);
    if (url.includes("/block/") && res.ok) {
      const wall = parseFloat(res.headers.get("X-Wall-Clock"));
      const index = parseInt(url.split("/block/")[1], 10);
      probe.blocks.push([index, wall, Date.now() / 1000]);
    }
    return res;
  };
  const start = () => {
    const video = document.getElementById("video");
    if (!video || !video.requestVideoFrameCallback) return setTimeout(start, 100);
    const canvas = document.createElement("canvas");
    let ctx = null;
    const onFrame = (now, meta) => {
      if (video.videoWidth && probe.row >= 0) {
        if (!ctx || canvas.width !== video.videoWidth) {
          canvas.width = video.videoWidth;
          canvas.height = video.videoHeight;
          ctx = canvas.getContext("2d", { willReadFrequently: true });
        }
        ctx.drawImage(video, 0, 0);
        const px = ctx.getImageData(0, probe.row, canvas.width, 1).data;
        const grey = new Array(canvas.width);
        for (let x = 0; x < canvas.width; x++) {
          grey[x] = Math.round(0.299 * px[4 * x] + 0.587 * px[4 * x + 1] + 0.114 * px[4 * x + 2]);
        }
        const shown = (performance.timeOrigin + meta.expectedDisplayTime) / 1000;
        probe.frames.push([shown, grey]);
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  };
  document.addEventListener("DOMContentLoaded", start);
})();
"""





def _popen(*cmd: str, pipe: bool = False) -> subprocess.Popen:
    """Start a process (quick: it does not wait for it)."""
    out = subprocess.PIPE if pipe else subprocess.DEVNULL
    return subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.DEVNULL, text=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


async def _measure_page(url: str, size: tuple[int, int], seconds: float, browser) -> dict:
    page = await browser.new_page()
    await page.add_init_script(PAGE_PROBE)
    top, strip = time_code_strip(*size)
    await page.goto(url)
    await page.evaluate(f"window.__glass.row = {top + strip // 2}")
    await page.wait_for_function(
        "window.player && player.state.ready && player.video.currentTime > 0",
        timeout=60_000,
        polling=200,
    )
    await asyncio.sleep(WARMUP_S)
    await page.evaluate("window.__glass.frames.length = 0; window.__glass.blocks.length = 0")
    stalls0 = await page.evaluate("player.state.stalls")
    await asyncio.sleep(seconds)
    frames = await page.evaluate("window.__glass.frames.splice(0)")
    blocks = await page.evaluate("window.__glass.blocks.splice(0)")
    player = await page.evaluate(
        "({stalls: player.state.stalls, hold: player.hold(),"
        " behind: player.state.liveEdge - player.video.currentTime})"
    )
    await page.close()
    gray = np.zeros((size[1], size[0]), dtype=np.uint8)
    glass, unread = [], 0
    now = time.time()
    for shown, row in frames:
        gray[top + strip // 2, : len(row)] = row
        captured = read_time_code(gray, now)
        if captured is None:
            unread += 1
        else:
            glass.append(shown - captured)
    # Blocks the page fetched at the live edge (history fetched by a seek would not say much).
    delivery = [arrival - wall for _, wall, arrival in blocks if arrival - wall < 30]
    return {
        "glass": glass,
        "unread": unread,
        "delivery": delivery,
        "stalls": player["stalls"] - stalls0,
        "hold": player["hold"],
        "behind": player["behind"],
    }


async def run_once(args: argparse.Namespace, part: float) -> list[dict]:
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        hub = f"http://127.0.0.1:{port}"
        procs: list[subprocess.Popen] = []
        try:
            procs.append(_popen(PY, "-m", "streamer", "hub", "--port", str(port)))
            stats = root / "stats.json"
            procs.append(_popen(
                PY, "-m", "streamer", "broadcast", "test", "--hub", hub, "--size", args.size,
                "--fps", "30", "--bitrate", args.bitrate, "--segment", str(args.segment),
                "--part", str(part), "--feed", str(root / "feed"), "--stats", str(stats),
            ))
            await _wait_for(lambda: read_stats(stats).get("length", 0) >= 3, 60, "the broadcast")
            key = read_stats(stats)["key"]
            urls = []
            for i in range(VIEWERS):
                proc = _popen(
                    PY, "-m", "viewer", "watch", key, "--hub", hub, "--no-browser",
                    "--port", "0", "--store", str(root / f"v{i}"), "--timeout", "30", pipe=True,
                )
                procs.append(proc)
                assert proc.stdout is not None
                line = await asyncio.to_thread(proc.stdout.readline)
                if not line.startswith("http"):
                    raise SystemExit("viewer watch did not print its URL")
                urls.append(line.strip())
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_ARGS
                )
                try:
                    pages = urls[-args.pages :]
                    return list(
                        await asyncio.gather(
                            *(_measure_page(u, size, args.seconds, browser) for u in pages)
                        )
                    )
                finally:
                    await browser.close()
        finally:
            for proc in reversed(procs):
                _stop(proc)


def _line(name: str, results: list[dict]) -> str:
    glass = [v for r in results for v in r["glass"]]
    delivery = [v for r in results for v in r["delivery"]]
    if not glass:
        return f"{name}: no frame read (unread {sum(r['unread'] for r in results)})"
    stalls = sum(r["stalls"] for r in results)
    return (
        f"{name}: glass-to-glass p50 {statistics.median(glass) * 1000:.0f} ms, "
        f"p95 {percentile(glass, 0.95) * 1000:.0f} ms ({len(glass)} frames, "
        f"{sum(r['unread'] for r in results)} unread); delivery (block wall clock -> page) "
        f"p50 {statistics.median(delivery) * 1000:.0f} ms, p95 {percentile(delivery, 0.95) * 1000:.0f} ms; "
        f"stalls {stalls}; live offset held {results[0]['hold']:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per run")
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--bitrate", default="800k")
    parser.add_argument("--segment", type=float, default=1.0)
    parser.add_argument("--part", type=float, default=DEFAULT_PART)
    parser.add_argument("--pages", type=int, default=1, help="pages (on the last viewers)")
    args = parser.parse_args()
    parts = asyncio.run(run_once(args, args.part))
    print(_line(f"parts ({args.part:g} s)", parts), flush=True)
    baseline = asyncio.run(run_once(args, args.segment))
    print(_line(f"baseline (--part {args.segment:g} = segment, one block per GOP)", baseline))
    print("target: parts glass-to-glass p95 <= 1000 ms")


if __name__ == "__main__":
    main()
