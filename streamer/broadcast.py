"""The broadcaster: source -> encoder (worker thread) -> feed.append -> publishers (the swarm).

Block 0 is the stream header; each later block one part (format v2: a CMAF chunk of about
--part seconds, independent when it starts a segment's keyframe; a v1 stream being resumed keeps
one block per GOP); a clean stop appends an empty FLAG_END block. Reopening a feed resumes its stream (same settings, timeline continued,
FLAG_DISCONTINUITY on the first new segment). It never encodes on the event loop, never appends a
block the stream's init segment cannot decode, and never parses argv (commands/broadcast.py does).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from streamer.core.errors import MediaError, UsageError
from streamer.core.feed import Feed
from streamer.media.encoder import (
    AUDIO_CHANNELS,
    AUDIO_RATE,
    MEDIA_DELAY,
    EncoderSettings,
    Fragment,
)
from streamer.media.format import (
    FLAG_DISCONTINUITY,
    FLAG_END,
    FORMAT_V1,
    FORMAT_VERSION,
    Segment,
    StreamFormatError,
    StreamHeader,
)
from streamer.media.parts import DEFAULT_PART, part_plan
from streamer.media.pipeline import Pipeline
from streamer.media.sources import Source

log = logging.getLogger(__name__)

X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
DEFAULT_BITRATE = 2_500_000
DEFAULT_SEGMENT = 1.0
DEFAULT_PRESET = "veryfast"
DEFAULT_MAX_SIZE = (
    1920,
    1080,
)  # a bigger source is scaled down to fit unless --size says otherwise
MAX_DIMENSION = 4096
FPS_RANGE = (1.0, 120.0)
BITRATE_RANGE = (50_000, 50_000_000)
SEGMENT_RANGE = (0.2, 10.0)

Publisher = Callable[[int], Awaitable[None] | None]


@dataclass(frozen=True)
class ResumePoint:
    """Where an existing stream in a feed left off."""

    header: StreamHeader
    length: int  # blocks in the feed
    end: float  # stream time right after its last segment


def resume_point(feed: Feed) -> ResumePoint | None:
    """The stream already in `feed`, or None for an empty feed. UsageError if the feed holds
    something that is not a swarmcast stream."""
    if feed.length == 0:
        return None
    try:
        header = StreamHeader.decode(feed.get(0))
        end = 0.0
        if feed.length > 1:
            last = Segment.decode_header(feed.get(feed.length - 1))
            end = last.pts + last.duration
    except StreamFormatError as exc:
        raise UsageError(
            f"{feed.directory} holds a feed that is not a swarmcast stream ({exc}); use another --feed"
        ) from None
    return ResumePoint(header, feed.length, end)


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size {text!r} is not WIDTHxHEIGHT, e.g. 1280x720") from None
    if not (16 <= w <= MAX_DIMENSION and 16 <= h <= MAX_DIMENSION):
        raise UsageError(
            f"--size {text} is out of range; width and height must be 16..{MAX_DIMENSION}"
        )
    if w % 2 or h % 2:
        raise UsageError(
            f"--size {text} has an odd dimension; H.264 4:2:0 needs even width and height"
        )
    return w, h


def parse_fps(text: str) -> Fraction:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--fps {text!r} is not a number, e.g. 30 or 29.97") from None
    if not FPS_RANGE[0] <= value <= FPS_RANGE[1]:
        raise UsageError(f"--fps {text} is out of range; use {FPS_RANGE[0]:g}..{FPS_RANGE[1]:g}")
    return _rational_fps(value)


def parse_bitrate(text: str) -> int:
    units = {"k": 1_000, "m": 1_000_000}
    raw = text.strip().lower()
    scale = units.get(raw[-1:], 1)
    try:
        value = float(raw[:-1] if raw[-1:] in units else raw) * scale
    except ValueError:
        raise UsageError(f"--bitrate {text!r} is not a bit rate, e.g. 2500k or 2.5M") from None
    if not (BITRATE_RANGE[0] <= value <= BITRATE_RANGE[1]) or math.isnan(value):
        raise UsageError(f"--bitrate {text} is out of range; use 50k..50M")
    return int(value)


def parse_seconds(option: str, text: str, low: float, high: float = math.inf) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a number of seconds") from None
    if not low <= value <= high:
        bound = f"{low:g}..{high:g}" if high != math.inf else f"at least {low:g}"
        raise UsageError(f"{option} {text} is out of range; use {bound} seconds")
    return value


def _rational_fps(value: float) -> Fraction:
    """Snap a measured or typed rate to what it surely means: 30, 30000/1001, else 1/100 steps."""
    for candidate in (Fraction(round(value)), Fraction(round(value * 1.001) * 1000, 1001)):
        if candidate > 0 and abs(float(candidate) - value) < 0.01:
            return candidate
    return Fraction(round(value * 100), 100)


def _fit(width: int, height: int, box: tuple[int, int]) -> tuple[int, int]:
    scale = min(1.0, box[0] / width, box[1] / height)
    return max(16, int(width * scale) & ~1), max(16, int(height * scale) & ~1)


def plan_settings(
    source: Source,
    *,
    size: tuple[int, int] | None = None,
    fps: Fraction | None = None,
    bitrate: int | None = None,
    segment: float | None = None,
    preset: str | None = None,
    resume: ResumePoint | None = None,
    part: float | None = None,
) -> EncoderSettings:
    """Encoder settings from explicit options, the resumed stream and the source, in that order.

    A resumed stream keeps its size, frame rate, segment, bit rate and preset (they shape the init
    segment every block must decode with); asking for different ones is a UsageError.
    """
    if preset is not None and preset not in X264_PRESETS:
        raise UsageError(
            f"--preset {preset!r} is not an x264 preset; use one of {', '.join(X264_PRESETS)}"
        )
    if resume is not None:
        h = resume.header
        kept = {
            "--size": ((h.width, h.height), size, f"{h.width}x{h.height}"),
            "--fps": (_rational_fps(h.fps), fps, f"{h.fps:g}"),
            "--segment": (h.segment_duration, segment, f"{h.segment_duration:g}"),
            "--bitrate": (h.extra.get("bitrate"), bitrate, str(h.extra.get("bitrate"))),
            "--preset": (h.extra.get("preset"), preset, str(h.extra.get("preset"))),
        }
        for option, (stored, asked, shown) in kept.items():
            if asked is not None and asked != stored:
                raise UsageError(
                    f"this feed's stream uses {option} {shown}; resume it with the same value "
                    "(or leave it out), or start a new stream with another --feed"
                )
        if h.extra.get("bitrate") is None or h.extra.get("preset") is None:
            raise UsageError(
                "this feed's stream header lacks its encoder settings; start a new stream with another --feed"
            )
        return EncoderSettings(
            h.width,
            h.height,
            _rational_fps(h.fps),
            int(h.extra["bitrate"]),
            h.segment_duration,
            str(h.extra["preset"]),
            part=_resumed_part(h, part),
        )
    if size is None:
        if not source.width or not source.height:
            raise MediaError(f"{source.description} does not say its picture size; give --size WxH")
        size = _fit(source.width, source.height, DEFAULT_MAX_SIZE)
    if fps is None:
        nominal = source.fps if source.fps and FPS_RANGE[0] <= source.fps <= 60 else 30.0
        fps = _rational_fps(nominal)
    segment = DEFAULT_SEGMENT if segment is None else segment
    if segment * fps < 1:
        raise UsageError(f"--segment {segment:g} is shorter than one frame at {float(fps):g} fps")
    part = DEFAULT_PART if part is None else part
    if part > segment + 1e-9:
        raise UsageError(f"--part {part:g} is longer than --segment {segment:g}; use at most the segment")
    return EncoderSettings(
        size[0],
        size[1],
        fps,
        DEFAULT_BITRATE if bitrate is None else bitrate,
        segment,
        preset or DEFAULT_PRESET,
        part=part if part < segment else None,
    )


def _resumed_part(h: StreamHeader, asked: float | None) -> float | None:
    """The part duration a resumed stream keeps: a v1 stream has none (one block per GOP)."""
    if h.version == FORMAT_V1:
        if asked is not None:
            raise UsageError(
                "this feed's stream is in format v1 (one block per segment) and cannot be cut "
                "into parts; leave out --part, or start a new stream with another --feed"
            )
        return None
    stored = h.part_duration if h.part_duration and h.part_duration < h.segment_duration else None
    if asked is not None:
        planned = part_plan(h.fps, h.segment_duration, asked)[0]
        if abs(planned - h.block_duration) > 1e-6:
            raise UsageError(
                f"this feed's stream uses --part {h.block_duration:g}; resume it with the same "
                "value (or leave it out), or start a new stream with another --feed"
            )
    return stored


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Replace path with data as JSON so a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


class Broadcaster:
    """Runs one broadcast of `source` into `feed` until the source ends, `duration` seconds of
    stream time pass, or stop() is called.

    Attach the network without touching media code: `publishers` are called (on the event loop)
    after each append with the feed's new length; `stats_providers` return fields (peers,
    bytes_up, bytes_down, ...) merged into the stats snapshot.
    """

    def __init__(
        self,
        feed: Feed,
        source: Source,
        settings: EncoderSettings,
        *,
        title: str = "",
        duration: float | None = None,
        fast: bool = False,
        stats_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.feed = feed
        self.source = source
        self.settings = settings
        self.title = title or source.title or source.description
        self.duration = duration
        self.fast = fast
        self.stats_path = Path(stats_path) if stats_path is not None else None
        self.publishers: list[Publisher] = []
        self.stats_providers: list[Callable[[], Mapping[str, Any]]] = []
        self.resume = resume_point(feed)
        self.start = self.resume.end if self.resume else 0.0
        self.pipeline = Pipeline(source, settings, start=self.start, duration=duration, fast=fast)
        self.state = "starting"
        self.segments_appended = 0
        self.live_delay_s: float | None = None
        # Per-frame latency from capture to the append of its block (seconds), most recent last.
        self.latencies: deque[float] = deque(maxlen=100_000)
        self._header_present = self.resume is not None
        self._next_flags = FLAG_DISCONTINUITY if self.resume and self.resume.length > 1 else 0
        self.format_version = self.resume.header.version if self.resume else FORMAT_VERSION

    @property
    def key(self) -> bytes:
        return self.feed.key

    def stop(self) -> None:
        """Ask for a clean end (last segment flushed, FLAG_END appended); safe from any thread."""
        if self.state in ("starting", "live"):
            self.state = "stopping"
        self.pipeline.stop()

    async def run(self) -> int:
        """Broadcast until done; returns the feed's final length. MediaError if encoding fails."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        worker = asyncio.ensure_future(
            asyncio.to_thread(
                self.pipeline.run,
                lambda init, mime: put("init", (init, mime)),
                lambda f: put("fragment", f),
            )
        )
        # Queued after every item the thread put, so it always arrives last.
        worker.add_done_callback(lambda _: queue.put_nowait(("done", None)))
        stats_task = (
            asyncio.create_task(self._write_stats_every_second()) if self.stats_path else None
        )
        try:
            while True:
                kind, value = await queue.get()
                if kind == "done":
                    break
                if kind == "init":
                    await self._start_stream(*value)
                else:
                    await self._append_fragment(value)
            worker.result()
            if self._header_present:
                end = Segment(
                    self.pipeline.end_time, 0.0, time.time(), b"", FLAG_END,
                    version=self.format_version,
                )
                await self._append(end.encode())
            self.state = "ended"
        except BaseException:
            self.state = "failed"
            self.pipeline.stop()
            with contextlib.suppress(BaseException):
                await worker
            raise
        finally:
            if stats_task is not None:
                stats_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stats_task
                await asyncio.to_thread(write_json_atomically, self.stats_path, self.snapshot())
        return self.feed.length

    async def _start_stream(self, init: bytes, mime: str) -> None:
        if self.resume is not None:
            if init != self.resume.header.init:
                raise MediaError(
                    "this encoder produces a different init segment than the stream in the feed "
                    "(another FFmpeg/x264 version?); start a new stream with another --feed"
                )
        else:
            s = self.settings
            part_duration, parts = part_plan(s.fps, s.segment, s.part)
            header = StreamHeader(
                title=self.title,
                start_time=time.time(),
                mime=mime,
                width=s.width,
                height=s.height,
                fps=float(s.fps),
                segment_duration=s.segment,
                part_duration=part_duration,
                parts_per_segment=parts,
                sample_rate=AUDIO_RATE,
                channels=AUDIO_CHANNELS,
                init=init,
                extra={
                    "bitrate": s.bitrate,
                    "preset": s.preset,
                    "audio_bitrate": s.audio_bitrate,
                    # media timestamps (tfdt) = segment pts + media_delay (the AAC priming frame)
                    "media_delay": float(MEDIA_DELAY),
                },
            )
            await self._append(header.encode())
            self._header_present = True
        if self.state == "starting":
            self.state = "live"

    async def _append_fragment(self, fragment: Fragment) -> None:
        segment = Segment(
            fragment.pts,
            fragment.duration,
            time.time(),
            fragment.data,
            self._next_flags,
            fragment.independent,
            fragment.back,
            self.format_version,
        )
        self._next_flags = 0
        await self._append(segment.encode())
        appended = time.monotonic()
        self.segments_appended += 1
        self.latencies.extend(appended - c for c in fragment.captured)
        if fragment.captured:
            self.live_delay_s = appended - fragment.captured[0]

    async def _append(self, block: bytes) -> None:
        # Feed.append is thread-safe and flushes to disk: keep that wait off the event loop.
        length = await asyncio.to_thread(self.feed.append, [block])
        for publish in list(self.publishers):
            try:
                result = publish(length)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception(
                    "a publisher failed after block %d; the broadcast goes on", length - 1
                )

    def snapshot(self) -> dict[str, Any]:
        """The stats JSON: feed counters, swarm fields (0 until providers say otherwise), encoder."""
        p = self.pipeline
        feed = self.feed
        stats: dict[str, Any] = {
            "key": feed.key.hex(),
            "title": self.title,
            "state": self.state,
            "length": feed.length,
            "blocks_have": feed.blocks_present,
            "byte_length": feed.byte_length,
            "peers": 0,
            "bytes_up": 0,
            "bytes_down": 0,
            "live_delay_s": None if self.live_delay_s is None else round(self.live_delay_s, 3),
            "segments_appended": self.segments_appended,
            "stream_time_s": round(p.end_time, 3),
            "encoder_frames": p.frames,
            "encoder_fps": round(p.frames / p.wall_seconds, 2) if p.wall_seconds else 0.0,
            "encoder_speed": round(p.stream_seconds / p.wall_seconds, 3) if p.wall_seconds else 0.0,
            "realtime_factor": round(p.stream_seconds / p.cpu_seconds, 2) if p.cpu_seconds else 0.0,
            "cpu_per_stream_s": round(p.cpu_seconds / p.stream_seconds, 4)
            if p.stream_seconds
            else 0.0,
            "updated": time.time(),
        }
        for provider in self.stats_providers:
            stats.update(provider())
        return stats

    async def _write_stats_every_second(self) -> None:
        assert self.stats_path is not None
        while True:
            try:
                await asyncio.to_thread(write_json_atomically, self.stats_path, self.snapshot())
            except OSError as exc:
                log.warning("cannot write stats to %s: %s", self.stats_path, exc)
            await asyncio.sleep(1.0)
