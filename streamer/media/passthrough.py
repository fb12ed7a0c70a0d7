"""Passthrough: cut an H.264 + AAC input into fMP4 parts without decoding or encoding, when its
keyframes already fall on the segment grid (a part starting at a keyframe is independent; the
muxer cuts the parts between keyframes as for encoding: streamer.media.parts).

copy_check() decides whether a source can be copied (and on which segment grid), giving the
reason in one line when not; PassthroughPipeline has the Pipeline interface (init + fragments
through callbacks, statistics, stop) and runs synchronously in one worker thread.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import av

from streamer.core.errors import MediaError
from streamer.media.encoder import (
    AUDIO_CODEC_STRING,
    MUXER_OPTIONS,
    VIDEO_TIME_BASE,
    BoxCutter,
    EncoderSettings,
    Fragment,
    avc_codec_string,
)
from streamer.media.frames import SourcePacket
from streamer.media.parts import PartCutter, part_muxer_options

# Media time = stream time + this delay, so the first B-frame's decode time is never negative
# (B-frames decode up to a few frames before they show); kept in the stream header.
PASSTHROUGH_DELAY = Fraction(1, 4)
COPY_PRESET = "copy"  # the stream header's "preset" for a passthrough stream
# A keyframe may sit this far from its grid point (as a share of the segment) and still count.
GRID_TOLERANCE = 0.1
BROWSER_PROFILES = {"Baseline", "Constrained Baseline", "Main", "High", "Extended"}


class PacketSource(Protocol):
    """A source that can hand over its compressed packets (FileSource, IngestSource)."""

    description: str
    width: int
    height: int
    fps: float | None
    live: bool

    @property
    def templates(self) -> tuple[av.VideoStream, av.AudioStream | None]: ...

    def probe_keyframes(self) -> list[float]: ...

    def packets(self, stop: threading.Event) -> Iterator[SourcePacket]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CopyPlan:
    """Whether to copy, and if so on which segment grid; `reason` says why not."""

    segment: float | None
    reason: str | None = None


def copy_check(source: Any, segment: float | None, segment_range: tuple[float, float]) -> CopyPlan:
    """Can `source` be cut without re-encoding on `segment` (None: its own keyframe interval)?"""
    if not hasattr(source, "packets"):
        return CopyPlan(None, f"{source.description} gives raw frames, which must be encoded")
    video, audio = source.templates
    v = video.codec_context
    if v.name != "h264":
        return CopyPlan(None, f"its video is {v.name}, not H.264")
    if v.profile not in BROWSER_PROFILES:
        return CopyPlan(None, f"its H.264 profile ({v.profile}) is not one browsers play")
    if v.pix_fmt not in (None, "yuv420p", "yuvj420p"):
        return CopyPlan(None, f"its H.264 pictures are {v.pix_fmt}, not 4:2:0")
    if audio is None:
        return CopyPlan(None, "it has no audio track (passthrough needs H.264 + AAC)")
    a = audio.codec_context
    if a.name != "aac":
        return CopyPlan(None, f"its audio is {a.name}, not AAC")
    if a.profile not in (None, "LC"):
        return CopyPlan(None, f"its AAC is {a.profile}, not AAC-LC")
    if not source.fps:
        return CopyPlan(None, "it does not say its frame rate")
    keys = source.probe_keyframes()
    gaps = [b - a for a, b in zip(keys, keys[1:], strict=False)]
    # A known grid needs one interval on it to trust; a grid read from the input needs two.
    if len(gaps) < (1 if segment is not None else 2):
        return CopyPlan(
            None, f"it has too few keyframes to check ({len(keys)} in the first seconds)"
        )
    frame = 1.0 / source.fps
    grid = segment if segment is not None else round(statistics.median(gaps) / frame) * frame
    tolerance = max(frame * 1.01, grid * GRID_TOLERANCE)
    irregular = [g for g in gaps if abs(g - grid) > tolerance]
    if irregular:
        shown = ", ".join(f"{g:.2f}" for g in gaps)
        return CopyPlan(
            None,
            f"its keyframes are {shown} s apart, not every {grid:g} s (set the publisher's "
            f"keyframe interval to {grid:g} s)",
        )
    if not segment_range[0] <= grid <= segment_range[1]:
        return CopyPlan(
            None,
            f"its keyframes are {grid:g} s apart, outside {segment_range[0]:g}..{segment_range[1]:g} s",
        )
    return CopyPlan(round(grid, 6))


class PassthroughPipeline:
    """Copies one run of a packet source onto the stream timeline starting at `start`."""

    media_delay = PASSTHROUGH_DELAY

    def __init__(
        self,
        source: Any,
        settings: EncoderSettings,
        *,
        start: float = 0.0,
        duration: float | None = None,
        fast: bool = False,
    ) -> None:
        self.source = source
        self.settings = settings
        # Continue the timeline on the frame grid after the previous run.
        fps = settings.fps
        self.start = float(-(-Fraction(start).limit_denominator(1_000_000) * fps // 1) / fps)
        self.duration = duration
        self.paced = not fast and not source.live
        self.stop_event = threading.Event()
        self.frames = 0
        self.stream_seconds = 0.0
        self.cpu_seconds = 0.0
        self.wall_seconds = 0.0
        self.end_time = self.start
        self.sample_rate = 0
        self.channels = 0

    def stop(self) -> None:
        self.stop_event.set()

    def stream_fields(self) -> dict[str, Any]:
        """Stream header fields this pipeline decides."""
        return {
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "extra": {
                "bitrate": self.settings.bitrate,
                "preset": COPY_PRESET,
                "media_delay": float(self.media_delay),
            },
        }

    def run(
        self, on_init: Callable[[bytes, str], None], on_fragment: Callable[[Fragment], None]
    ) -> None:
        keep = getattr(self.source, "keep_publisher_settings", None)
        if keep is not None:  # a later publisher must send what this init segment describes
            keep()
        _, audio_in = self.source.templates
        if audio_in is None:
            raise MediaError("passthrough needs an audio track; this source has none")
        self.sample_rate = audio_in.codec_context.sample_rate
        self.channels = audio_in.codec_context.channels
        audio_tb = Fraction(1, self.sample_rate)
        step = 1.0 / float(self.settings.fps)
        delay = float(self.media_delay)
        # (stream time, capture time, discontinuity) of each muxed video packet not yet in a part,
        # in decode order, the order the muxer's runs list their samples in
        pending: deque[tuple[float, float, bool]] = deque()
        last_dts = {"video": -1, "audio": -1}
        init: bytes | None = None
        muxer: _Muxer | None = None
        video_end = self.start
        cursor = self.start  # where the next dependent part starts
        stop = self.stop_event
        cpu0, wall0 = time.process_time(), time.monotonic()

        def take(final: bool) -> None:
            nonlocal init, cursor
            assert muxer is not None
            cutter = muxer.cutter
            if init is None and cutter.init is not None:
                init = cutter.init
                on_init(cutter.init, muxer.mime)
            elif cutter.init is not None and cutter.init != init:
                raise MediaError(
                    "the publisher's stream changed in a way this passthrough stream cannot "
                    "follow; start a new stream with another --feed"
                )
            out: list[Fragment] = []
            while cutter.fragments:
                try:
                    part = muxer.parts.cut(cutter.fragments.popleft())
                except ValueError as exc:
                    raise MediaError(
                        f"the passthrough muxer wrote a fragment that does not parse: {exc}"
                    ) from None
                if part is None:
                    continue
                if part.frames > len(pending):
                    raise MediaError("the passthrough muxer cut more frames than it was given")
                frames = [pending.popleft() for _ in range(part.frames)]
                # A part starting at a keyframe starts at its time; the parts after it follow on
                # by their frame counts; the last part of a run ends with its last frame.
                start = frames[0][0] if part.independent else cursor
                discontinuity = part.independent and frames[0][2]
                end = video_end if final and not pending else start + part.frames * step
                cursor = end
                out.append(
                    Fragment(
                        start,
                        end - start,
                        part.data,
                        part.frames,
                        [f[1] for f in frames],
                        part.independent,
                        part.back,
                        discontinuity,
                    )
                )
            if final and (tail := muxer.parts.flush()) and out:
                out[-1].data += tail
            for fragment in out:
                on_fragment(fragment)
            self.end_time = video_end
            self.stream_seconds = video_end - self.start
            self.cpu_seconds = time.process_time() - cpu0
            self.wall_seconds = time.monotonic() - wall0

        try:
            for item in self.source.packets(stop):
                if stop.is_set():
                    break
                if item is None:
                    # The input paused (a publisher left): cut the GOP held in the muxer now,
                    # rather than when a publisher comes back; a new muxer takes the next one.
                    if muxer is not None and pending:
                        muxer.close()
                        take(True)
                        muxer = None
                    continue
                is_video = item.kind == "video"
                key = is_video and item.packet.is_keyframe
                if self.duration is not None and item.pts >= self.duration - 1e-6:
                    if key:
                        break
                    # A frame shown later but decoded earlier may be what a B-frame before the
                    # end refers to: keep it (the stream then ends a frame or two later).
                    if not is_video or item.dts >= self.duration - 1e-6:
                        continue
                if self.paced:
                    wait = wall0 + item.dts - time.monotonic()
                    if wait > 0 and stop.wait(wait):
                        break
                    item.captured = time.monotonic()
                packet = item.packet
                tb = VIDEO_TIME_BASE if is_video else audio_tb
                pts = round((self.start + item.pts + delay) / tb)
                dts = round((self.start + item.dts + delay) / tb)
                if dts <= last_dts[item.kind] or dts < 0:
                    continue  # overlaps what was sent (a reconnect's first audio): drop it
                if muxer is None:
                    if not key:
                        continue  # a new muxer starts at a keyframe
                    video_in, audio_in = self.source.templates
                    muxer = _Muxer(video_in, audio_in, self.settings)
                last_dts[item.kind] = dts
                if is_video:
                    restarted = key and item.discontinuity and self.frames > 0
                    pending.append((self.start + item.pts, item.captured, restarted))
                    video_end = max(video_end, self.start + item.pts + step)
                    self.frames += 1
                muxer.mux(packet, is_video, tb, max(pts, dts), dts)
                take(False)
            if muxer is not None:
                muxer.close()
                take(True)
        except BaseException:
            if muxer is not None:
                muxer.abort()
            raise
        finally:
            self.source.close()


class _Muxer:
    """An fMP4 muxer copying one input's video and audio streams into BoxCutter fragments, one per
    part (PartCutter tells what each is)."""

    def __init__(
        self,
        video_in: av.VideoStream,
        audio_in: av.AudioStream | None,
        settings: EncoderSettings,
    ) -> None:
        if audio_in is None:
            raise MediaError("passthrough needs an audio track; this input has none")
        self.cutter = BoxCutter()
        self.parts = PartCutter()  # the video stream is added first: track 1
        options = part_muxer_options(MUXER_OPTIONS, settings.fps, settings.part, settings.segment)
        try:
            self.out = av.open(self.cutter, "w", format="mp4", options=options)
            self.video = self.out.add_stream_from_template(video_in)
            self.audio = self.out.add_stream_from_template(audio_in)
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"cannot set up the passthrough muxer: {exc}") from None
        self.video.time_base = VIDEO_TIME_BASE
        self.audio.time_base = Fraction(1, audio_in.codec_context.sample_rate)
        self._closed = False

    @property
    def mime(self) -> str:
        avc = avc_codec_string(self.video.codec_context.extradata)
        return f'video/mp4; codecs="{avc},{AUDIO_CODEC_STRING}"'

    def mux(self, packet: av.Packet, is_video: bool, tb: Fraction, pts: int, dts: int) -> None:
        packet.stream = self.video if is_video else self.audio
        packet.time_base = tb
        packet.pts, packet.dts = pts, dts
        try:
            self.out.mux(packet)
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"the passthrough muxer failed: {exc}") from None

    def close(self) -> None:
        self._closed = True
        try:
            self.out.close()
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"the passthrough muxer failed at the end: {exc}") from None

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.out.close()
            except (av.FFmpegError, ValueError, OSError):
                pass  # abandoning the stream
