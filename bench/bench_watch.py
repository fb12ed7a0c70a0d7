"""Viewer join time: from starting `viewer watch KEY` to the first frame being playable (the
stream header and the newest keyframe block verified and stored, the page server up: the moment
the command prints its URL), p50/p95 over repeated joins of a live test-pattern stream.

Baseline in the same run (client/server): a fresh Python process that imports the viewer and
fetches the init segment and the newest block over HTTP from a server that already holds them
(the first viewer's page server), which is what a CDN viewer would pay. Everything runs as real
processes on 127.0.0.1. Usage: python3 bench/bench_watch.py [--joins 10] [--size 640x360]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchutil import free_port, percentile, read_stats

PY = sys.executable




def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")



def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _watch(key: str, hub: str, store: Path) -> tuple[subprocess.Popen, str, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [PY, "-m", "viewer", "watch", key, "--hub", hub, "--no-browser", "--port", "0",
         "--store", str(store), "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    elapsed = time.perf_counter() - start
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit("viewer watch did not print its URL")
    return proc, url, elapsed


def _baseline(url: str) -> float:
    newest = json.load(urllib.request.urlopen(f"{url}stats"))["length"] - 1
    code = (
        "import urllib.request, viewer.watch\n"
        f"urllib.request.urlopen('{url}init.mp4').read()\n"
        f"urllib.request.urlopen('{url}block/{newest}.m4s').read()\n"
    )
    start = time.perf_counter()
    subprocess.run([PY, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=10)
    parser.add_argument("--size", default="640x360")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        hub = f"http://127.0.0.1:{port}"
        procs: list[subprocess.Popen] = []
        try:
            procs.append(subprocess.Popen(
                [PY, "-m", "streamer", "hub", "--port", str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            stats = root / "stats.json"
            procs.append(subprocess.Popen(
                [PY, "-m", "streamer", "broadcast", "test", "--hub", hub, "--size", args.size,
                 "--fps", "30", "--bitrate", "800k", "--feed", str(root / "feed"),
                 "--stats", str(stats)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            _wait_for(lambda: read_stats(stats).get("length", 0) >= 4, 60, "the broadcast to start")
            key = read_stats(stats)["key"]

            first, url, _ = _watch(key, hub, root / "v0")  # stays up: a peer and the baseline server
            procs.append(first)
            joins, baseline = [], []
            for i in range(args.joins):
                proc, _, elapsed = _watch(key, hub, root / f"v{i + 1}")
                joins.append(elapsed)
                _stop(proc)
                baseline.append(_baseline(url))
                print(f"join {i + 1}: {elapsed * 1000:.0f} ms (client/server {baseline[-1] * 1000:.0f} ms)")
        finally:
            for proc in reversed(procs):
                _stop(proc)

    p50, p95 = statistics.median(joins), percentile(joins, 0.95)
    b50, b95 = statistics.median(baseline), percentile(baseline, 0.95)
    print(f"viewer watch join (start -> first frame playable): p50 {p50 * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms (target p95 <= 1500 ms)")
    print(f"client/server baseline (fresh process, HTTP fetch of init + newest block): "
          f"p50 {b50 * 1000:.0f} ms, p95 {b95 * 1000:.0f} ms")
    print(f"ratio p50 {p50 / b50:.2f}x, p95 {p95 / b95:.2f}x")


if __name__ == "__main__":
    main()
