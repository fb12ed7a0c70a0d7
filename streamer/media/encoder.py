"""Encode timed video and audio frames into H.264 + AAC fragmented MP4, cut into the init segment
and one moof+mdat fragment per part (streamer.media.parts; keyframes on the segment grid, one
fragment per GOP when parts are whole segments).

Runs synchronously in whichever thread calls it (the broadcaster uses a worker thread); it never
touches a feed, the network or the event loop, and never paces: times are given by the caller.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
from av.video.frame import PictureType

from streamer.core.errors import MediaError
from streamer.media.parts import PartCutter, part_muxer_options

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_RATE = 48000
AUDIO_CHANNELS = 2
AUDIO_LAYOUT = "stereo"
AAC_FRAME = 1024
AUDIO_CODEC_STRING = "mp4a.40.2"  # AAC-LC, what FFmpeg's aac encoder produces
# frag_discont + no edit list + make_non_negative: every tfdt is the absolute media time, so a
# resumed broadcast's fragments continue the timeline instead of restarting at zero.
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+skip_trailer+frag_discont"
MUXER_OPTIONS = {
    "movflags": MOVFLAGS,
    "use_editlist": "0",
    "avoid_negative_ts": "make_non_negative",
}
# The AAC encoder stamps its first packet one frame before its input. Media time is stream time
# plus this one frame, for audio and video alike, so no timestamp is ever negative (which the
# muxer would "fix" by shifting everything) and sync holds without edit lists.
MEDIA_DELAY_SAMPLES = AAC_FRAME
MEDIA_DELAY = Fraction(MEDIA_DELAY_SAMPLES, 48000)
# Audio that drifts less than this from where its timestamp says it belongs is appended as is:
# timestamps jitter, and resyncing on every frame would click.
AUDIO_RESYNC_S = 0.04


@dataclass(frozen=True)
class EncoderSettings:
    """Output parameters; everything that shapes the init segment lives here."""

    width: int
    height: int
    fps: Fraction
    bitrate: int  # video bits per second
    segment: float  # seconds per segment (keyframe grid)
    preset: str = "veryfast"
    audio_bitrate: int = 128_000
    part: float | None = None  # seconds per part (fragment); None: one fragment per segment


@dataclass
class Fragment:
    """One part (or whole GOP) as moof+mdat bytes and its place on the stream timeline."""

    pts: float
    duration: float
    data: bytes
    frames: int
    captured: list[float] = field(default_factory=list)  # monotonic capture time of each frame
    independent: bool = True  # starts with a keyframe
    back: int = 0  # fragments back to the independent one it decodes from
    discontinuity: bool = False  # starts where the input restarted (a publisher reconnected)


class BoxCutter:
    """Splits the muxer's byte stream at top-level MP4 boxes: the init (up to and including
    `moov`), then each `moof` + following `mdat`. Writes from the muxer do not align with boxes,
    so bytes are buffered until a box is complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pending = bytearray()  # complete boxes of the unit being built
        self.init: bytes | None = None
        self.fragments: deque[bytes] = deque()

    def write(self, data: bytes) -> int:
        self._buffer += data
        while True:
            box = self._next_box()
            if box is None:
                return len(data)
            kind, raw = box
            self._pending += raw
            if kind == b"moov" and self.init is None:
                self.init = bytes(self._pending)
                self._pending.clear()
            elif kind == b"mdat" and self.init is not None:
                self.fragments.append(bytes(self._pending))
                self._pending.clear()

    def _next_box(self) -> tuple[bytes, bytes] | None:
        buf = self._buffer
        if len(buf) < 8:
            return None
        size = int.from_bytes(buf[0:4], "big")
        kind = bytes(buf[4:8])
        if size == 1:
            if len(buf) < 16:
                return None
            size = int.from_bytes(buf[8:16], "big")
        if size < 8:
            raise MediaError(f"the MP4 muxer wrote a malformed box {kind!r}; this is a bug")
        if len(buf) < size:
            return None
        raw = bytes(buf[:size])
        del buf[:size]
        return kind, raw


def avc_codec_string(extradata: bytes | None) -> str:
    """`avc1.PPCCLL` from H.264 extradata (Annex-B start codes or an avcC record)."""
    if not extradata:
        raise MediaError("the H.264 encoder produced no SPS; cannot build the MSE codec string")
    if extradata[0] == 1 and len(extradata) >= 4:  # avcC: version, profile, compat, level
        return "avc1." + extradata[1:4].hex()
    i = 0
    while True:
        i = extradata.find(b"\x00\x00\x01", i)
        if i < 0 or i + 6 > len(extradata):
            raise MediaError("the H.264 encoder's extradata holds no SPS")
        if extradata[i + 3] & 0x1F == 7:
            return "avc1." + extradata[i + 4 : i + 7].hex()
        i += 3


class StreamEncoder:
    """H.264 + AAC into fMP4 with keyframes forced on the segment grid.

    Video frames come at any times and any size; they are converted to constant frame rate (slot
    n shows the newest frame not later than the slot's midpoint) and scaled. Audio of any format
    is resampled to 48 kHz stereo and placed by its timestamp; gaps become silence. The audio
    track always exists: a source without audio gets silence, so every stream has the same MSE
    codec string and a resumed stream may switch sources.
    """

    def __init__(
        self, settings: EncoderSettings, start: float = 0.0, audio_lag: float = 1.0
    ) -> None:
        self.settings = settings
        # Slot 0 sits on the frame grid of the whole timeline, so a resumed run's keyframes land
        # on the same segment grid as the first run's.
        self.start = math.ceil(start * settings.fps - 1e-6) / settings.fps if start else 0.0
        self.audio_lag = audio_lag  # silence fills audio that lags video by more than this
        self.cutter = BoxCutter()
        self._slot = 0
        # newest input frame, its capture time, and whether it starts after an input restart
        self._held: tuple[av.VideoFrame, float, bool] | None = None
        self._last_key_time: float | None = None
        # (start time, slot, discontinuity) of GOPs not yet cut
        self._gops: deque[tuple[float, int, bool]] = deque()
        self._captures: deque[float] = deque()
        self._parts = PartCutter()
        self._cut_slot = 0  # first slot of the next fragment
        self._audio_next = round(
            self.start * AUDIO_RATE
        )  # next sample index on the stream timeline
        self._audio_buf = np.zeros((AUDIO_CHANNELS, 0), dtype=np.float32)
        self._resampler = av.AudioResampler(format="fltp", layout=AUDIO_LAYOUT, rate=AUDIO_RATE)
        self._closed = False
        self.video_codec_string: str | None = None
        try:
            options = part_muxer_options(MUXER_OPTIONS, settings.fps, settings.part, settings.segment)
            self._container = av.open(self.cutter, "w", format="mp4", options=options)
            self._video = self._container.add_stream(
                "libx264",
                rate=settings.fps,
                options={
                    "preset": settings.preset,
                    "tune": "zerolatency",
                    "forced-idr": "1",
                    "x264-params": f"keyint={self._keyint()}:min-keyint=1:scenecut=0",
                },
            )
            # x264 picks a thread count from the cores (0 = auto); with zerolatency they are
            # slice threads, which split each frame instead of adding frames of delay.
            self._video.codec_context.thread_count = 0
            self._video.width = settings.width
            self._video.height = settings.height
            self._video.pix_fmt = "yuv420p"
            self._video.bit_rate = settings.bitrate
            self._video.codec_context.time_base = VIDEO_TIME_BASE
            self._video.time_base = VIDEO_TIME_BASE
            # The default "twoloop" coder costs ~3x the CPU of "fast" (5 % of a core at 48 kHz
            # stereo, as much as 360p video); the difference is inaudible at streaming bit rates.
            self._audio = self._container.add_stream(
                "aac", rate=AUDIO_RATE, layout=AUDIO_LAYOUT, options={"aac_coder": "fast"}
            )
            self._audio.bit_rate = settings.audio_bitrate
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"cannot set up the H.264/AAC encoder: {exc}") from None

    def _keyint(self) -> int:
        # Keyframes are forced on the grid; x264's own limit must never fire before the next grid
        # point, or a GOP (and so a fragment) would split in two.
        return max(2, math.ceil(self.settings.segment * float(self.settings.fps)) * 2 + 2)

    @property
    def mime(self) -> str:
        if self.video_codec_string is None:
            # Known once the muxer has started: that opens the H.264 encoder and fills extradata.
            self.video_codec_string = avc_codec_string(self._video.codec_context.extradata)
        return f'video/mp4; codecs="{self.video_codec_string},{AUDIO_CODEC_STRING}"'

    @property
    def init(self) -> bytes | None:
        return self.cutter.init

    @property
    def slot_duration(self) -> float:
        return 1.0 / float(self.settings.fps)

    def slot_time(self, slot: int) -> float:
        return self.start + float(slot / self.settings.fps)

    @property
    def frame_count(self) -> int:
        """Video frames encoded so far."""
        return self._slot

    @property
    def video_end(self) -> float:
        """Stream time at which the video encoded so far ends."""
        return self.slot_time(self._slot)

    def add_video(
        self, frame: av.VideoFrame, time: float, captured: float, discontinuity: bool = False
    ) -> list[Fragment]:
        """Feed one video frame shown from stream time `time`; returns completed fragments.

        `discontinuity` (the input restarted) starts a new GOP, and so a new fragment, at the
        first slot that shows this frame.
        """
        if self._held is not None:
            half = self.slot_duration / 2
            while self.slot_time(self._slot) + half <= time:
                self._encode_slot(*self._held)
                self._held = (self._held[0], self._held[1], False)
        elif time > self.slot_time(0) + self.slot_duration / 2:
            # The first frame defines slot 0, whatever its timestamp says.
            self.start = time
            self._audio_next = max(self._audio_next, round(time * AUDIO_RATE))
        self._held = (frame, captured, discontinuity)
        return self._take_fragments()

    def add_audio(self, frame: av.AudioFrame, time: float) -> list[Fragment]:
        """Feed one audio frame of any format starting at stream time `time`."""
        try:
            out = self._resampler.resample(frame)
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"cannot resample the source's audio: {exc}") from None
        for resampled in out:
            samples = resampled.to_ndarray().astype(np.float32, copy=False)
            if samples.shape[0] != AUDIO_CHANNELS:
                samples = np.resize(samples, (AUDIO_CHANNELS, samples.shape[1]))
            self._place_audio(samples, round(time * AUDIO_RATE))
            time += samples.shape[1] / AUDIO_RATE
        self._encode_audio()
        return self._take_fragments()

    def close(self) -> list[Fragment]:
        """Encode what is held, flush the encoders and muxer, return the remaining fragments."""
        if self._closed:
            return []
        self._closed = True
        if self._held is not None:
            self._encode_slot(*self._held)
        end_sample = round(self.video_end * AUDIO_RATE)
        if self._audio_end < end_sample:
            self._pad_silence(end_sample)
        else:
            self._audio_buf = self._audio_buf[:, : max(0, end_sample - self._audio_next)]
        self._encode_audio(final=True)
        try:
            self._mux(self._video.encode(None))
            self._mux(self._audio.encode(None))
            self._container.close()
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"the encoder failed while finishing the stream: {exc}") from None
        return self._take_fragments(final=True)

    def abort(self) -> None:
        """Drop everything without flushing (after an error)."""
        if not self._closed:
            self._closed = True
            try:
                self._container.close()
            except (av.FFmpegError, ValueError, OSError):
                pass  # the stream is being abandoned; nothing more can be saved

    # -- video --------------------------------------------------------------------------------

    def _encode_slot(
        self, frame: av.VideoFrame, captured: float, discontinuity: bool = False
    ) -> None:
        s = self.settings
        time = self.slot_time(self._slot)
        grid = s.segment
        is_key = (
            self._last_key_time is None
            or (discontinuity and self._slot > 0)
            or (
                math.floor(time / grid + 1e-9) > math.floor(self._last_key_time / grid + 1e-9)
                and time - self._last_key_time >= grid / 2 - 1e-9
            )
        )
        try:
            out = frame.reformat(width=s.width, height=s.height, format="yuv420p")
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"cannot convert a video frame: {exc}") from None
        out.pts = round((time + MEDIA_DELAY) / VIDEO_TIME_BASE)
        out.time_base = VIDEO_TIME_BASE
        out.pict_type = PictureType.I if is_key else PictureType.NONE
        if is_key:
            self._last_key_time = time
            self._gops.append((time, self._slot, discontinuity))
        self._captures.append(captured)
        self._slot += 1
        try:
            packets = self._video.encode(out)
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"the H.264 encoder failed: {exc}") from None
        self._mux(packets)
        # Audio that stalls (a silent file track, a stuck microphone) must not hold fragments back.
        lag_limit = round((self.video_end - self.audio_lag) * AUDIO_RATE)
        if self._audio_end < lag_limit:
            self._pad_silence(lag_limit)
        self._encode_audio()

    # -- audio --------------------------------------------------------------------------------

    @property
    def _audio_end(self) -> int:
        return self._audio_next + self._audio_buf.shape[1]

    def _place_audio(self, samples: np.ndarray, at: int) -> None:
        end = self._audio_end
        tolerance = round(AUDIO_RESYNC_S * AUDIO_RATE)
        if at > end + tolerance:
            self._pad_silence(at)
        elif at + samples.shape[1] <= end - tolerance:
            return  # entirely in the past (e.g. after silence filled a stall)
        elif at < end - tolerance:
            samples = samples[:, end - at :]
        self._audio_buf = np.concatenate([self._audio_buf, samples], axis=1)

    def _pad_silence(self, until: int) -> None:
        missing = until - self._audio_end
        if missing > 0:
            silence = np.zeros((AUDIO_CHANNELS, missing), dtype=np.float32)
            self._audio_buf = np.concatenate([self._audio_buf, silence], axis=1)

    def _encode_audio(self, final: bool = False) -> None:
        buf = self._audio_buf
        count = buf.shape[1] // AAC_FRAME
        if final and buf.shape[1] % AAC_FRAME:
            count += 1
            pad = count * AAC_FRAME - buf.shape[1]
            buf = np.concatenate([buf, np.zeros((AUDIO_CHANNELS, pad), dtype=np.float32)], axis=1)
        for i in range(count):
            chunk = np.ascontiguousarray(buf[:, i * AAC_FRAME : (i + 1) * AAC_FRAME])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=AUDIO_LAYOUT)
            frame.sample_rate = AUDIO_RATE
            frame.pts = self._audio_next + MEDIA_DELAY_SAMPLES
            frame.time_base = Fraction(1, AUDIO_RATE)
            self._audio_next += AAC_FRAME
            try:
                self._mux(self._audio.encode(frame))
            except (av.FFmpegError, ValueError) as exc:
                raise MediaError(f"the AAC encoder failed: {exc}") from None
        self._audio_buf = buf[:, count * AAC_FRAME :]

    # -- output -------------------------------------------------------------------------------

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            self._container.mux(packet)

    def _take_fragments(self, final: bool = False) -> list[Fragment]:
        out: list[Fragment] = []
        fragments = self.cutter.fragments
        while fragments:
            try:
                part = self._parts.cut(fragments.popleft())
            except ValueError as exc:
                raise MediaError(f"the MP4 muxer wrote a fragment that does not parse: {exc}") from None
            if part is None:
                continue
            slot, end_slot = self._cut_slot, self._cut_slot + part.frames
            while self._gops and self._gops[0][1] < slot:
                self._gops.popleft()
            keyed = bool(self._gops) and self._gops[0][1] == slot
            discontinuity = False
            if keyed:
                discontinuity = self._gops.popleft()[2]
            if keyed != part.independent or (self._gops and self._gops[0][1] < end_slot):
                raise MediaError("the muxer cut a fragment that does not end at a forced keyframe")
            self._cut_slot = end_slot
            captured = [self._captures.popleft() for _ in range(part.frames)]
            start = self.slot_time(slot)
            out.append(
                Fragment(
                    start,
                    self.slot_time(end_slot) - start,
                    part.data,
                    part.frames,
                    captured,
                    part.independent,
                    part.back,
                    discontinuity,
                )
            )
        if final and (tail := self._parts.flush()) and out:
            last = out[-1]
            last.data += tail
        return out
