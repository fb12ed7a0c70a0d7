"""Helpers for media tests: make clips in many containers with PyAV (the test pattern's flash and
beep, so sync survives any codec), run the pipeline, and decode init + blocks back to check them."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamer.media.encoder import EncoderSettings, Fragment
from streamer.media.pipeline import Pipeline
from streamer.media.sources import Source
from streamer.media.testpattern import TestPattern


def make_clip(
    path: Path,
    *,
    fmt: str | None = None,
    video: str = "libx264",
    audio: str | None = "aac",
    seconds: float = 2.0,
    size: tuple[int, int] = (160, 120),
    fps: int = 30,
    rate: int = 48000,
    pix_fmt: str = "yuv420p",
) -> Path:
    """Write a clip of the test pattern (flash + beep each second) with the given codecs."""
    pattern = TestPattern(*size)
    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream(video, rate=fps)
        vs.width, vs.height = size
        vs.pix_fmt = pix_fmt
        if video in ("libvpx", "libvpx-vp9"):
            vs.options = {"deadline": "realtime", "cpu-used": "8"}
        as_ = None
        if audio is not None:
            layout = "stereo"
            as_ = out.add_stream(audio, rate=rate, layout=layout)
        frames = int(seconds * fps)
        sample = 0
        for n in range(frames):
            t = n / fps
            frame = pattern.video_frame(t, 0.0).reformat(format=pix_fmt)
            frame.pts = n
            frame.time_base = Fraction(1, fps)
            for packet in vs.encode(frame):
                out.mux(packet)
            if as_ is not None:
                until = int((n + 1) * rate / fps)
                size_ = as_.codec_context.frame_size or 1024
                while sample + size_ <= until or (n == frames - 1 and sample < until):
                    mono = pattern.audio_frame(sample, size_, rate).to_ndarray()
                    fmt_name = as_.codec_context.format.name
                    stereo = np.repeat(mono, 2, axis=0)
                    if fmt_name in ("s16", "s16p"):
                        stereo = (stereo * 32767).astype(np.int16)
                    elif fmt_name in ("s32", "s32p"):
                        stereo = (stereo * 2**31 - 1).astype(np.int32)
                    if not fmt_name.endswith("p"):
                        stereo = stereo.T.reshape(1, -1)
                    aframe = av.AudioFrame.from_ndarray(
                        np.ascontiguousarray(stereo), format=fmt_name, layout=layout
                    )
                    aframe.sample_rate = rate
                    aframe.pts = sample
                    aframe.time_base = Fraction(1, rate)
                    for packet in as_.encode(aframe):
                        out.mux(packet)
                    sample += size_
        for packet in vs.encode(None):
            out.mux(packet)
        if as_ is not None:
            for packet in as_.encode(None):
                out.mux(packet)
    return path


@dataclass
class Encoded:
    init: bytes
    mime: str
    fragments: list[Fragment]
    pipeline: Pipeline


def run_pipeline(
    source: Source,
    *,
    size: tuple[int, int] = (160, 120),
    fps: int = 30,
    segment: float = 1.0,
    start: float = 0.0,
    duration: float | None = None,
    bitrate: int = 300_000,
) -> Encoded:
    settings = EncoderSettings(
        size[0], size[1], Fraction(fps), bitrate, segment, preset="ultrafast"
    )
    pipeline = Pipeline(source, settings, start=start, duration=duration, fast=True)
    got: dict = {}
    fragments: list[Fragment] = []
    pipeline.run(lambda init, mime: got.update(init=init, mime=mime), fragments.append)
    return Encoded(got["init"], got["mime"], fragments, pipeline)


@dataclass
class Decoded:
    video_times: list[float]
    keyframes: list[bool]
    flash_times: list[float]  # frames where the test pattern's flash box lights up
    audio_start: float
    audio: np.ndarray  # mono float samples from audio_start, 48 kHz

    def beep_onsets(self, rate: int = 48000) -> list[float]:
        loud = np.abs(self.audio) > 0.2
        onsets = []
        previous = -1.0
        for i in np.flatnonzero(loud):
            t = self.audio_start + i / rate
            if t - previous > 0.5:
                onsets.append(t)
            previous = t
        return onsets

    def flash_onsets(self) -> list[float]:
        onsets = []
        previous = -1.0
        for t in self.flash_times:
            if t - previous > 0.5:
                onsets.append(t)
            previous = t
        return onsets


def decode(data: bytes) -> Decoded:
    """Decode a whole fMP4 byte string with PyAV."""
    with av.open(io.BytesIO(data)) as container:
        times, keys, flashes = [], [], []
        for frame in container.decode(video=0):
            times.append(float(frame.time))
            keys.append(bool(frame.key_frame))
            w, h = frame.width, frame.height
            box = max(4, h // 8) & ~1
            fx = (w - box - w // 20) & ~1
            luma = frame.to_ndarray(format="gray")
            region = luma[h // 20 + 1 : h // 20 + box - 1, fx + 1 : fx + box - 1]
            if region.mean() > 200:
                flashes.append(float(frame.time))
    with av.open(io.BytesIO(data)) as container:
        chunks, start = [], None
        for frame in container.decode(audio=0):
            if start is None:
                start = float(frame.time)
            chunks.append(
                frame.to_ndarray().reshape(
                    frame.layout.nb_channels if frame.format.is_planar else 1, -1
                )[0]
            )
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return Decoded(times, keys, flashes, start or 0.0, audio)


def av_offsets(decoded: Decoded) -> list[float]:
    """Audio beep onset minus video flash onset, for each second where both were found."""
    beeps = decoded.beep_onsets()
    offsets = []
    for flash in decoded.flash_onsets():
        near = [b for b in beeps if abs(b - flash) < 0.4]
        if near:
            offsets.append(near[0] - flash)
    return offsets
