"""Benchmark ingest: CPU per second of stream (process time) for H.264 + AAC inputs broadcast with
passthrough (--copy) and re-encoding (--reencode) in the same run, with realtime factor and cores
used beside a bare libx264 encode of the same input (Debian's ffmpeg, same preset, tune, bit rate
and keyframe interval); then capture -> append latency of RTMP ingest (ffmpeg publishing in real
time) in both modes. Inputs are made here with ffmpeg testsrc2 in a temporary directory.
Run: python3 bench/bench_ingest.py [--seconds 10] [--sizes 720p30,1080p30,1080p60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchutil import free_port

from streamer.broadcast import Broadcaster, BroadcastOptions, plan_settings
from streamer.core.feed import Feed
from streamer.media.ingest import IngestSource

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "720p30": (1280, 720, 30),
    "1080p30": (1920, 1080, 30),
    "1080p60": (1920, 1080, 60),
}
BITRATE = "2500k"  # the broadcaster's default
PRESET = "veryfast"


def make_input(path: Path, width: int, height: int, fps: int, seconds: float) -> Path:
    """An H.264 + AAC file with a keyframe every second, like OBS set up as the README says."""
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y"]
        + ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}"]
        + ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
        + ["-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-g", str(fps)]
        + ["-b:v", "6M", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", str(path)],
        check=True,
    )
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one child process."""
    cpu0, wall0 = _children_cpu(), time.monotonic()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return _children_cpu() - cpu0, time.monotonic() - wall0


def broadcast(source: Path, mode: str, feed: Path) -> tuple[float, float, dict]:
    stats = feed.with_suffix(".json")
    cpu, wall = timed(
        [sys.executable, "-m", "streamer", "broadcast", str(source), "--feed", str(feed)]
        + ["--fast", "--no-swarm", mode, "--stats", str(stats)]
        + (["--bitrate", BITRATE, "--preset", PRESET] if mode == "--reencode" else [])
    )
    return cpu, wall, json.loads(stats.read_text())


def bare_x264(source: Path, fps: int) -> tuple[float, float]:
    return timed(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(source)]
        + ["-c:v", "libx264", "-preset", PRESET, "-tune", "zerolatency", "-b:v", BITRATE]
        + ["-g", str(fps), "-c:a", "aac", "-f", "null", "-"]
    )


async def rtmp_latency(mode: str, width: int, height: int, fps: int, seconds: float) -> list[float]:
    """Per-frame latency from a frame's arrival at the RTMP server to the append of its block."""
    source = await asyncio.to_thread(_open_ingest, width, height, fps, seconds)
    options = BroadcastOptions(copy=mode == "--copy", preset=None if mode == "--copy" else PRESET)
    with tempfile.TemporaryDirectory() as tmp, Feed.create(Path(tmp) / "feed") as feed:
        broadcaster = Broadcaster(feed, source, plan_settings(source, options), options)
        task = asyncio.create_task(broadcaster.run())
        await asyncio.to_thread(_publisher_done.wait)
        # the stream ends by itself: the source gives up once no publisher is back within 2 s
        await task
        return list(broadcaster.latencies)


_publisher_done = threading.Event()


def _open_ingest(width: int, height: int, fps: int, seconds: float) -> IngestSource:
    _publisher_done.clear()
    port_box: list[int] = []

    def push() -> None:
        while not port_box:
            time.sleep(0.05)
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re"]
            + ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}"]
            + ["-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
            + ["-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-tune"]
            + ["zerolatency", "-g", str(fps), "-b:v", "4M", "-c:a", "aac", "-f", "flv"]
            + [f"rtmp://127.0.0.1:{port_box[0]}/live/bench"],
            check=False,
            capture_output=True,
        )
        _publisher_done.set()

    port = free_port()
    port_box.append(port)
    threading.Thread(target=push, daemon=True).start()
    return IngestSource(f"rtmp://127.0.0.1:{port}/live/bench", timeout=2.0)



def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each input")
    parser.add_argument("--sizes", default="720p30,1080p30,1080p60")
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--live-size", default="720p30")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(
        f"{args.seconds:g} s H.264+AAC inputs (ffmpeg testsrc2, keyframe every second); "
        f"{cores} cores; re-encode and bare x264: {PRESET} + zerolatency, {BITRATE}"
    )
    print(
        f"{'':22}{'whole process':^32}   {'media path':^32}\n"
        f"{'input':8} {'mode':12} {'cpu-s/stream-s':>14} {'realtime x':>10} {'cores':>6}"
        f"   {'cpu-s/stream-s':>14} {'realtime x':>10} {'cores':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in filter(None, args.sizes.split(",")):  # --sizes "": latency only
            w, h, fps = SIZES[name]
            source = make_input(Path(tmp) / f"{name}.mp4", w, h, fps, args.seconds)
            rows = []
            for mode in ("--copy", "--reencode"):
                cpu, wall, stats = broadcast(source, mode, Path(tmp) / f"{name}{mode}")
                assert stats["mode"] == mode.strip("-").replace("reencode", "encode"), stats
                per_s, speed = stats["cpu_per_stream_s"], stats["encoder_speed"]
                media = f"{per_s:14.3f} {speed:10.2f} {per_s * speed:6.2f}"
                rows.append((mode.strip("-"), cpu, wall, media))
            rows.append(("bare x264", *bare_x264(source, fps), f"{'(same)':>14}"))
            for label, cpu, wall, media in rows:
                s = args.seconds
                print(
                    f"{name:8} {label:12} {cpu / s:14.3f} {s / wall:10.2f} {cpu / wall:6.2f}"
                    f"   {media}"
                )
    print(
        "\n(whole process: the child's CPU and wall time, Python start-up included; media path: "
        "the broadcaster's own stats (cpu_per_stream_s, encoder_speed) from its first to its last "
        "block; bare x264: ffmpeg decoding the same file and encoding it to nothing)"
    )
    w, h, fps = SIZES[args.live_size]
    print(
        f"\nRTMP ingest, {args.live_size} published in real time by ffmpeg for "
        f"{args.live_seconds:g} s: arrival at the server -> block appended (1 s segments)"
    )
    print(
        "steady state: frames after the first 3 s (passthrough reads 3 keyframes ahead to check "
        "the grid); the last GOP is appended when the publisher leaves"
    )
    print(
        f"{'mode':12} {'ideal p50/p95':>14} {'p50 (s)':>8} {'p95 (s)':>8} {'max (s)':>8} "
        f"{'all max':>8} {'frames':>7}"
    )
    ideal = [(fps - k) / fps for k in range(fps)]
    for mode in ("--copy", "--reencode"):
        lat = asyncio.run(rtmp_latency(mode, w, h, fps, args.live_seconds))
        steady = lat[3 * fps :]
        print(
            f"{mode.strip('-'):12} {pct(ideal, 50):6.3f}/{pct(ideal, 95):.3f} "
            f"{pct(steady, 50):8.3f} {pct(steady, 95):8.3f} {max(steady):8.3f} {max(lat):8.3f} "
            f"{len(lat):7d}"
        )


if __name__ == "__main__":
    main()
