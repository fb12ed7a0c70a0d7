"""The broadcaster: source -> encoder or passthrough (worker threads) -> feed.append; the swarm
follows the feed.

Block 0 is the stream header; each later block one part (format v2: a CMAF chunk of about
--part seconds, independent when it starts a keyframe-aligned segment; a v1 stream being resumed
keeps one block per GOP), whether encoded here or cut from the input's own packets (passthrough);
a clean stop appends an empty FLAG_END block. Reopening a feed resumes its stream (same settings,
timeline continued, FLAG_DISCONTINUITY on the first new part, as on a part where the input
restarted). It never encodes on the event loop, never appends a block the stream's init segment
cannot decode, and never parses argv: commands/broadcast.py turns the command line into a typed
BroadcastOptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any

from streamer.core.errors import MediaError, StreamFormatError, UsageError
from streamer.core.feed import Feed
from streamer.core.stats import NodeStats
from streamer.media.encoder import EncoderSettings, Fragment
from streamer.media.format import (
    FLAG_DISCONTINUITY,
    FLAG_END,
    FORMAT_V1,
    FORMAT_VERSION,
    Segment,
    StreamHeader,
)
from streamer.media.parts import DEFAULT_PART, part_plan
from streamer.media.passthrough import COPY_PRESET, PassthroughPipeline, copy_check
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
FPS_RANGE = (1.0, 120.0)
SEGMENT_RANGE = (0.2, 10.0)


class BroadcastState(Enum):
    """Where a broadcast is; the stats JSON carries the value."""

    STARTING = "starting"
    LIVE = "live"
    STOPPING = "stopping"
    ENDED = "ended"
    FAILED = "failed"


@dataclass(frozen=True)
class BroadcastOptions:
    """What the user asked for, already parsed and range-checked (commands/broadcast.py does that).

    None means "not given": the resumed stream or the source decides (see plan_settings).
    """

    size: tuple[int, int] | None = None
    fps: Fraction | None = None
    bitrate: int | None = None  # video bits per second
    segment: float | None = None  # seconds per segment
    preset: str | None = None  # one of X264_PRESETS
    title: str = ""
    duration: float | None = None  # seconds of stream time, then stop
    fast: bool = False  # encode as fast as possible instead of pacing a file at real time
    stats_path: Path | None = None  # rewrite a JSON stats snapshot here every second
    copy: bool | None = None  # passthrough: True --copy, False --reencode, None when safe
    part: float | None = None  # seconds per part (None: DEFAULT_PART, or the resumed stream's)


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


def rational_fps(value: float) -> Fraction:
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
    options: BroadcastOptions | None = None,
    resume: ResumePoint | None = None,
) -> EncoderSettings:
    """Encoder settings from explicit options, the resumed stream and the source, in that order.

    A resumed stream keeps its size, frame rate, segment, bit rate, preset and part duration (they
    shape the init segment and the blocks); asking for different ones is a UsageError. A new
    stream is cut into parts of options.part (DEFAULT_PART) seconds, encoded or copied alike.

    Passthrough (preset COPY_PRESET: blocks cut from the input's own H.264/AAC) is chosen when
    options.copy allows it, no option asks for encoding, and copy_check finds the input fit; a
    passthrough stream resumes only as one. Otherwise the reason is logged in one line.
    """
    o = options or BroadcastOptions()
    size, fps, bitrate, segment, preset, part = o.size, o.fps, o.bitrate, o.segment, o.preset, o.part
    asked = (("--size", size), ("--fps", fps), ("--bitrate", bitrate), ("--preset", preset))
    shaping = [name for name, value in asked if value is not None]  # options only encoding obeys
    if o.copy and shaping:
        raise UsageError(
            f"--copy keeps the input's pictures as they are; {shaping[0]} needs re-encoding "
            "(leave out --copy)"
        )
    if resume is not None and resume.header.extra.get("preset") == COPY_PRESET:
        return _resume_copy(source, o, resume)
    if resume is not None and o.copy:
        raise UsageError(
            "this feed's stream was encoded here; --copy cannot continue it (leave out --copy, "
            "or start a new stream with another --feed)"
        )
    if resume is None and o.copy is not False and not shaping:
        plan = copy_check(source, segment, SEGMENT_RANGE)
        if plan.segment is not None:
            assert source.fps is not None  # copy_check refuses a source without a frame rate
            return EncoderSettings(
                source.width,
                source.height,
                rational_fps(source.fps),
                _source_bitrate(source),
                plan.segment,
                COPY_PRESET,
                part=_new_part(part, plan.segment),
            )
        if o.copy or hasattr(source, "packets"):
            log.info(
                "re-encoding: %s cannot be copied as it is: %s", source.description, plan.reason
            )
    if resume is not None:
        h = resume.header
        kept: dict[str, tuple[object, object, str]] = {
            "--size": ((h.width, h.height), size, f"{h.width}x{h.height}"),
            "--fps": (rational_fps(h.fps), fps, f"{h.fps:g}"),
            "--segment": (h.segment_duration, segment, f"{h.segment_duration:g}"),
            "--bitrate": (h.extra.get("bitrate"), bitrate, str(h.extra.get("bitrate"))),
            "--preset": (h.extra.get("preset"), preset, str(h.extra.get("preset"))),
        }
        for option, (stored, wanted, shown) in kept.items():
            if wanted is not None and wanted != stored:
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
            rational_fps(h.fps),
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
        fps = rational_fps(nominal)
    segment = DEFAULT_SEGMENT if segment is None else segment
    if segment * fps < 1:
        raise UsageError(f"--segment {segment:g} is shorter than one frame at {float(fps):g} fps")
    return EncoderSettings(
        size[0],
        size[1],
        fps,
        DEFAULT_BITRATE if bitrate is None else bitrate,
        segment,
        preset or DEFAULT_PRESET,
        part=_new_part(part, segment),
    )


def _new_part(asked: float | None, segment: float) -> float | None:
    """The part duration of a new stream on `segment`; None when a part is a whole segment."""
    part = DEFAULT_PART if asked is None else asked
    if part > segment + 1e-9:
        raise UsageError(
            f"--part {part:g} is longer than --segment {segment:g}; use at most the segment"
        )
    return part if part < segment else None


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


def _source_bitrate(source: Source) -> int:
    video, _ = source.templates  # type: ignore[attr-defined]
    return int(video.bit_rate or video.codec_context.bit_rate or 0)


def _resume_copy(source: Source, o: BroadcastOptions, resume: ResumePoint) -> EncoderSettings:
    """Settings to continue a passthrough stream, which only another passthrough can."""
    h = resume.header
    if o.copy is False:
        raise UsageError(
            "this feed's stream is a passthrough (the input's own H.264); --reencode cannot "
            "continue it (start a new stream with another --feed)"
        )
    if o.segment is not None and o.segment != h.segment_duration:
        raise UsageError(
            f"this feed's stream uses --segment {h.segment_duration:g}; resume it with the same "
            "value (or leave it out), or start a new stream with another --feed"
        )
    plan = copy_check(source, h.segment_duration, SEGMENT_RANGE)
    if plan.segment is None:
        raise MediaError(
            f"this feed's stream is a passthrough, so only a copy can continue it, and "
            f"{source.description} cannot be copied: {plan.reason}"
        )
    return EncoderSettings(
        h.width,
        h.height,
        rational_fps(h.fps),
        int(h.extra.get("bitrate") or 0),
        h.segment_duration,
        COPY_PRESET,
        part=_resumed_part(h, o.part),
    )


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Replace path with data as JSON so a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


class Broadcaster:
    """Runs one broadcast of `source` into `feed` until the source ends, `duration` seconds of
    stream time pass, or stop() is called.

    The network attaches without touching media code: it follows the feed (Feed listeners), and
    `stats_providers` return fields (peers, bytes_up, bytes_down, ...) merged into the stats
    snapshot.
    """

    def __init__(
        self,
        feed: Feed,
        source: Source,
        settings: EncoderSettings,
        options: BroadcastOptions | None = None,
    ) -> None:
        o = options or BroadcastOptions()
        self.feed = feed
        self.source = source
        self.settings = settings
        self.title = o.title or source.title or source.description
        self.duration = o.duration
        self.fast = o.fast
        self.stats_path = o.stats_path
        self.stats_providers: list[Callable[[], Mapping[str, Any]]] = []
        self.resume = resume_point(feed)
        self.start = self.resume.end if self.resume else 0.0
        kind = PassthroughPipeline if settings.preset == COPY_PRESET else Pipeline
        self.pipeline: Pipeline | PassthroughPipeline = kind(
            source, settings, start=self.start, duration=self.duration, fast=self.fast
        )
        self.state = BroadcastState.STARTING
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
        if self.state in (BroadcastState.STARTING, BroadcastState.LIVE):
            self.state = BroadcastState.STOPPING
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
            asyncio.create_task(self.write_stats_every_second()) if self.stats_path else None
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
            self.state = BroadcastState.ENDED
        except BaseException:
            self.state = BroadcastState.FAILED
            self.pipeline.stop()
            with contextlib.suppress(BaseException):
                await worker
            raise
        finally:
            if stats_task is not None:
                stats_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stats_task
                await self.write_stats()
        return self.feed.length

    async def _start_stream(self, init: bytes, mime: str) -> None:
        if self.resume is not None:
            if init != self.resume.header.init:
                if self.settings.preset == COPY_PRESET:
                    raise MediaError(
                        "the input's H.264/AAC parameters differ from this passthrough stream's "
                        "(publish with the same encoder settings as before), or start a new "
                        "stream with another --feed"
                    )
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
                init=init,
                **self.pipeline.stream_fields(),
            )
            await self._append(header.encode())
            self._header_present = True
        if self.state is BroadcastState.STARTING:
            self.state = BroadcastState.LIVE

    async def _append_fragment(self, fragment: Fragment) -> None:
        flags = self._next_flags | (FLAG_DISCONTINUITY if fragment.discontinuity else 0)
        segment = Segment(
            fragment.pts,
            fragment.duration,
            time.time(),
            fragment.data,
            flags,
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
        await asyncio.to_thread(self.feed.append, [block])

    def snapshot(self) -> dict[str, Any]:
        """The stats JSON (core.stats.NodeStats: feed counters, swarm fields, 0 until providers
        say otherwise) plus the encoder's figures."""
        p = self.pipeline
        feed = self.feed
        node = NodeStats(
            key=feed.key.hex(),
            length=feed.length,
            blocks_have=feed.blocks_present,
            byte_length=feed.byte_length,
            live_delay_s=None if self.live_delay_s is None else round(self.live_delay_s, 3),
            ended=self.state is BroadcastState.ENDED,
        )
        stats: dict[str, Any] = {
            **node.as_json(),
            "title": self.title,
            "state": self.state.value,
            "segments_appended": self.segments_appended,
            "stream_time_s": round(p.end_time, 3),
            "mode": "copy" if self.settings.preset == COPY_PRESET else "encode",
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

    async def write_stats(self) -> None:
        """Write the stats snapshot to `stats_path` now (nothing without one)."""
        if self.stats_path is None:
            return
        try:
            await asyncio.to_thread(write_json_atomically, self.stats_path, self.snapshot())
        except OSError as exc:
            log.warning("cannot write stats to %s: %s", self.stats_path, exc)

    async def write_stats_every_second(self) -> None:
        """Rewrite the stats file every second until cancelled: run() does while it runs; a
        caller that stays on the swarm after it (lingering) keeps it going."""
        if self.stats_path is None:
            return
        while True:
            await self.write_stats()
            await asyncio.sleep(1.0)
