"""Benchmark the broadcaster's media path: encoder CPU per stream second at 360p30 and 720p30
(full pipeline: scale, H.264 + AAC, fMP4 cutting, signed feed appends) beside a bare libx264
encode of the same frames in the same run, and the capture -> append latency at real-time pacing
beside the ideal wait for the segment to complete. Run: python3 bench/bench_encode.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from fractions import Fraction

import av

from streamer.broadcast import Broadcaster, BroadcastOptions
from streamer.core.feed import Feed
from streamer.media.encoder import AUDIO_RATE, EncoderSettings, StreamEncoder
from streamer.media.format import Segment
from streamer.media.sources import TestPatternSource
from streamer.media.testpattern import TestPattern

SIZES = {"360p30": (640, 360, 1_000_000), "720p30": (1280, 720, 2_500_000)}
FPS = 30


def _frames(width: int, height: int, seconds: float) -> list[av.VideoFrame]:
    pattern = TestPattern(width, height)
    return [pattern.video_frame(n / FPS, time.time()) for n in range(int(seconds * FPS))]


def bare_x264(frames: list[av.VideoFrame], bitrate: int, preset: str) -> float:
    """CPU seconds for libx264 alone (same preset, tune, bit rate and keyframe interval)."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
    codec.time_base, codec.framerate, codec.bit_rate = Fraction(1, FPS), Fraction(FPS), bitrate
    codec.options = {
        "preset": preset,
        "tune": "zerolatency",
        "x264-params": f"keyint={FPS}:scenecut=0",
    }
    start = time.process_time()
    for n, frame in enumerate(frames):
        frame.pts = n
        codec.encode(frame)
    codec.encode(None)
    return time.process_time() - start


def full_pipeline(frames: list[av.VideoFrame], bitrate: int, preset: str) -> float:
    """CPU seconds for our encoder with audio, segmenting and signed appends to a feed."""
    w, h = frames[0].width, frames[0].height
    settings = EncoderSettings(w, h, Fraction(FPS), bitrate, 1.0, preset)
    tone = [TestPattern.audio_frame(i * 1600, 1600) for i in range(len(frames))]
    with tempfile.TemporaryDirectory() as tmp, Feed.create(tmp) as feed:
        start = time.process_time()
        encoder = StreamEncoder(settings)
        fragments = []
        for n, frame in enumerate(frames):
            fragments += encoder.add_audio(tone[n], n * 1600 / AUDIO_RATE)
            fragments += encoder.add_video(frame, n / FPS, 0.0)
            if fragments:
                feed.append(
                    [Segment(f.pts, f.duration, time.time(), f.data).encode() for f in fragments]
                )
                fragments = []
        fragments += encoder.close()
        feed.append(
            [encoder.init]
            + [Segment(f.pts, f.duration, time.time(), f.data).encode() for f in fragments]
        )
        return time.process_time() - start


async def live_latency(
    width: int, height: int, bitrate: int, seconds: float, segment: float
) -> tuple[list[float], list[float]]:
    """Per-frame capture -> append latency of a real-time broadcast, and the ideal (segment wait)."""
    settings = EncoderSettings(width, height, Fraction(FPS), bitrate, segment, "veryfast")
    with tempfile.TemporaryDirectory() as tmp, Feed.create(tmp) as feed:
        broadcaster = Broadcaster(
            feed,
            TestPatternSource(width, height, FPS, live=True),
            settings,
            BroadcastOptions(duration=seconds),
        )
        await broadcaster.run()
        per_segment = round(segment * FPS)
        ideal = [
            (per_segment - k) / FPS
            for _ in range(len(broadcaster.latencies) // per_segment)
            for k in range(per_segment)
        ]
        return list(broadcaster.latencies), ideal


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="stream seconds per CPU measurement"
    )
    parser.add_argument(
        "--live-seconds", type=float, default=8.0, help="real-time seconds per latency run"
    )
    parser.add_argument("--segment", type=float, default=1.0)
    parser.add_argument("--preset", default="veryfast")
    args = parser.parse_args()

    print(
        f"encoder CPU, {args.seconds:g} s of test pattern, preset {args.preset} + zerolatency (process CPU time)"
    )
    print(f"{'size':8} {'baseline x264':>22} {'full pipeline':>22} {'overhead':>9}")
    for name, (w, h, bitrate) in SIZES.items():
        frames = _frames(w, h, args.seconds)
        base = min(bare_x264(frames, bitrate, args.preset) for _ in range(2))
        ours = min(full_pipeline(frames, bitrate, args.preset) for _ in range(2))
        s = args.seconds
        print(
            f"{name:8} {base / s:7.3f} cpu-s/s (x{s / base:5.1f}) {ours / s:7.3f} cpu-s/s (x{s / ours:5.1f}) {ours / base:8.2f}x"
        )

    print(
        f"\ncapture -> append latency at real-time pacing, {args.live_seconds:g} s, {args.segment:g} s segments"
    )
    print(
        f"{'size':8} {'ideal p50/p95 (s)':>18} {'measured p50/p95 (s)':>21} {'added p95 (ms)':>15} {'target p95':>11}"
    )
    for name, (w, h, bitrate) in SIZES.items():
        measured, ideal = asyncio.run(live_latency(w, h, bitrate, args.live_seconds, args.segment))
        n = min(len(measured), len(ideal))
        added = [m - i for m, i in zip(measured[:n], ideal[:n], strict=True)]
        p95 = pct(measured, 95)
        verdict = "ok" if p95 <= args.segment + 0.1 else "MISSED"
        print(
            f"{name:8} {pct(ideal, 50):8.3f}/{pct(ideal, 95):.3f} {pct(measured, 50):11.3f}/{p95:.3f}"
            f" {pct(added, 95) * 1000:15.1f} {args.segment + 0.1:7.2f} {verdict}"
        )


if __name__ == "__main__":
    main()
