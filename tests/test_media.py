"""Sources, encoder and segmenter: real PyAV encoding of the test pattern and of clips in several
containers and codecs, decoded back to check timing, keyframes, sync and mid-stream joins."""

from __future__ import annotations

import io
import re
import threading
from fractions import Fraction
from pathlib import Path

import av
import pytest

from streamer.core.errors import MediaError
from streamer.media.encoder import BoxCutter, EncoderSettings, avc_codec_string
from streamer.media.pipeline import Pipeline
from streamer.media.sources import FileSource, TestPatternSource, WebcamSource, open_source
from streamer.media.testpattern import TestPattern, clock_text
from tests.fixtures_media import av_offsets, decode, make_clip, run_pipeline

FPS = 30


def _joined(encoded, start: int = 0, stop: int | None = None) -> bytes:
    return encoded.init + b"".join(f.data for f in encoded.fragments[start:stop])


def _check_sync(decoded, tolerance: float = 0.05) -> None:
    # The very first frame of a stream is pinned to time 0 by the muxer's shift of AAC priming,
    # so its flash is up to one priming period early; sync is judged from the second second on.
    offsets = [
        o for o, t in zip(av_offsets(decoded), decoded.flash_onsets(), strict=False) if t > 0.5
    ]
    assert offsets, "no flash/beep pairs found"
    assert max(abs(o) for o in offsets) <= tolerance, offsets


def test_test_pattern_becomes_keyframe_aligned_fragments_on_the_grid() -> None:
    encoded = run_pipeline(TestPatternSource(160, 120, FPS, live=False), duration=3.0)
    assert re.fullmatch(r'video/mp4; codecs="avc1\.[0-9a-f]{6},mp4a\.40\.2"', encoded.mime)
    assert [(f.pts, round(f.duration, 6), f.frames) for f in encoded.fragments] == [
        (0.0, 1.0, 30),
        (1.0, 1.0, 30),
        (2.0, 1.0, 30),
    ]
    decoded = decode(_joined(encoded))
    assert len(decoded.video_times) == 90
    assert decoded.video_times == sorted(decoded.video_times)
    assert abs(len(decoded.audio) / 48000 - 3.0) < 0.05
    _check_sync(decoded)
    for fragment in encoded.fragments:
        alone = decode(encoded.init + fragment.data)
        assert alone.keyframes[0], "every block starts with a keyframe"
        assert len(alone.video_times) == fragment.frames


def test_init_plus_a_run_starting_mid_stream_decodes() -> None:
    encoded = run_pipeline(TestPatternSource(160, 120, FPS, live=False), duration=4.0)
    decoded = decode(_joined(encoded, 2))
    assert len(decoded.video_times) == 60
    assert decoded.keyframes[0]
    assert 1.95 < decoded.video_times[0] < 2.1
    _check_sync(decoded)


def test_segment_duration_sets_the_keyframe_grid() -> None:
    encoded = run_pipeline(TestPatternSource(160, 120, FPS, live=False), duration=2.0, segment=0.5)
    assert [f.frames for f in encoded.fragments] == [15, 15, 15, 15]


def test_a_resumed_run_continues_the_timeline_on_the_same_grid() -> None:
    encoded = run_pipeline(TestPatternSource(160, 120, FPS, live=False), start=7.25, duration=2.0)
    # Slot 0 moves up to the timeline's frame grid (7 + 8/30); keyframes stay on whole seconds.
    times = [(round(f.pts, 6), round(f.duration, 6)) for f in encoded.fragments]
    assert times == [(round(7 + 8 / 30, 6), round(22 / 30, 6)), (8.0, 1.0), (9.0, round(8 / 30, 6))]
    decoded = decode(_joined(encoded))
    assert abs(decoded.video_times[0] - 7.2667) < 0.03
    assert len(decoded.video_times) == 60


@pytest.mark.parametrize(
    ("name", "fmt", "video", "audio", "fps"),
    [
        ("clip.mkv", "matroska", "libvpx", "libopus", 30),
        ("clip.webm", "webm", "libvpx-vp9", "libopus", 30),
        ("clip.avi", "avi", "mpeg4", "mp3", 30),
        ("clip.mov", "mov", "libx264", "aac", 30),
        ("clip.ts", "mpegts", "mpeg2video", "mp2", 25),
        ("clip.avi", "avi", "mpeg4", "pcm_s16le", 24),
    ],
)
def test_files_in_many_containers_and_codecs_are_transcoded_in_sync(
    tmp_path: Path, name: str, fmt: str, video: str, audio: str, fps: int
) -> None:
    clip = make_clip(tmp_path / name, fmt=fmt, video=video, audio=audio, seconds=3.0, fps=fps)
    encoded = run_pipeline(open_source(str(clip), fast=True), size=(128, 96))
    decoded = decode(_joined(encoded))
    assert abs(len(decoded.video_times) - 90) <= 1  # resampled to 30 fps
    assert abs(sum(f.duration for f in encoded.fragments) - 3.0) < 0.05
    assert all(f.frames >= 1 for f in encoded.fragments)
    with av.open(io.BytesIO(_joined(encoded))) as out:
        assert (
            out.streams.video[0].codec_context.width,
            out.streams.video[0].codec_context.height,
        ) == (128, 96)
    _check_sync(decoded)


def test_a_file_without_audio_gets_a_silent_track(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "mute.mp4", audio=None, seconds=2.0)
    source = open_source(str(clip), fast=True)
    assert not source.has_audio
    encoded = run_pipeline(source)
    decoded = decode(_joined(encoded))
    assert len(decoded.video_times) == 60
    # Decoded audio adds the priming frame, and silence runs up to two AAC frames ahead.
    assert 0 <= len(decoded.audio) / 48000 - 2.0 < 0.1
    assert float(abs(decoded.audio).max()) < 1e-3


def test_loop_repeats_a_file_with_a_monotonic_timeline(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "short.mp4", seconds=1.0)
    encoded = run_pipeline(FileSource(str(clip), loop=True), duration=3.5)
    assert abs(encoded.pipeline.stream_seconds - 3.5) < 0.05
    decoded = decode(_joined(encoded))
    assert len(decoded.video_times) == 105
    assert all(b > a for a, b in zip(decoded.video_times, decoded.video_times[1:], strict=False))
    _check_sync(decoded)


def test_the_webcam_path_with_a_lavfi_stand_in() -> None:
    camera = WebcamSource(
        "testsrc2=size=160x120:rate=30,realtime",
        audio_device="sine=frequency=440:sample_rate=44100,arealtime",
        video_format="lavfi",
        audio_format="lavfi",
    )
    assert camera.live and camera.has_audio
    encoded = run_pipeline(camera, duration=1.6, segment=0.5)
    decoded = decode(_joined(encoded))
    assert 44 <= len(decoded.video_times) <= 50
    assert all(
        alone.keyframes[0] for alone in (decode(encoded.init + f.data) for f in encoded.fragments)
    )
    assert abs(len(decoded.audio) / 48000 - len(decoded.video_times) / FPS) < 0.1
    assert float(abs(decoded.audio).max()) > 0.05  # the stand-in microphone's tone got through


def test_stop_flushes_the_last_gop() -> None:
    source = TestPatternSource(160, 120, FPS, live=True)
    pipeline = Pipeline(source, EncoderSettings(160, 120, Fraction(FPS), 200_000, 1.0, "ultrafast"))
    fragments = []
    first = threading.Event()

    def on_fragment(fragment) -> None:
        fragments.append(fragment)
        first.set()

    worker = threading.Thread(target=pipeline.run, args=(lambda i, m: None, on_fragment))
    worker.start()
    assert first.wait(10)
    pipeline.stop()
    worker.join(10)
    assert not worker.is_alive()
    assert len(fragments) >= 2
    assert fragments[-1].frames >= 1
    assert fragments[-1].pts == pytest.approx(fragments[-2].pts + fragments[-2].duration)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: str(d / "missing.mp4"), "does not exist"),
        (
            lambda d: _write(d / "notes.txt", b"hello, this is not a video\n" * 50),
            "not a media file",
        ),
        (lambda d: _write(d / "noise.mp4", bytes(range(256)) * 100), "not a media file"),
        (lambda d: str(make_clip_audio_only(d / "sound.m4a")), "no video stream"),
        (lambda d: str(d), "directory"),
    ],
)
def test_bad_files_raise_one_line_media_errors(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(MediaError) as info:
        open_source(make(tmp_path), fast=True)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_missing_webcam_is_a_media_error() -> None:
    with pytest.raises(MediaError, match="no webcam at /dev/video77"):
        open_source("webcam:/dev/video77")


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def make_clip_audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=48000, layout="mono")
        for i in range(20):
            f = TestPattern.audio_frame(i * 1024, 1024)
            f.pts = i * 1024
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def test_box_cutter_splits_at_boxes_whatever_the_write_sizes() -> None:
    encoded = run_pipeline(TestPatternSource(64, 48, FPS, live=False), duration=2.0)
    stream = _joined(encoded)
    large = b"\x00\x00\x00\x01moof" + (24).to_bytes(8, "big") + b"\x00" * 8
    stream_with_large = stream + large + b"\x00\x00\x00\x08mdat"
    for step in (1, 7, 4096):
        cutter = BoxCutter()
        for i in range(0, len(stream_with_large), step):
            cutter.write(stream_with_large[i : i + step])
        assert cutter.init == encoded.init
        assert list(cutter.fragments)[:2] == [f.data for f in encoded.fragments]
        assert list(cutter.fragments)[2] == large + b"\x00\x00\x00\x08mdat"


def test_codec_string_from_annex_b_and_avcc() -> None:
    assert avc_codec_string(b"\x00\x00\x00\x01\x67\x64\x00\x1f\xac") == "avc1.64001f"
    assert avc_codec_string(b"\x01\x42\xc0\x1e\xff") == "avc1.42c01e"
    with pytest.raises(MediaError):
        avc_codec_string(b"")


def test_clock_text_is_utc_with_milliseconds() -> None:
    assert clock_text(3723.0456) == "01:02:03.046"
    assert clock_text(59.9996) == "00:01:00.000"


class _FailingSource(TestPatternSource):
    """The test pattern, then a capture error; notes which threads read it and whether it is
    closed while still being read."""

    def __init__(self) -> None:
        super().__init__(160, 120, FPS, live=False)
        self.threads: set[int] = set()
        self.closed_while_reading = False
        self._reading = False

    def frames(self, stop):
        self._reading = True
        try:
            for n, item in enumerate(super().frames(stop)):
                self.threads.add(threading.get_ident())
                if n == 40:
                    raise MediaError("the capture card went away")
                yield item
        finally:
            self._reading = False

    def close(self) -> None:
        self.closed_while_reading |= self._reading


def test_a_source_error_in_the_reader_thread_ends_the_run_with_that_error() -> None:
    source = _FailingSource()
    pipeline = Pipeline(
        source, EncoderSettings(160, 120, Fraction(FPS), 200_000, 1.0, "ultrafast"), fast=True
    )
    with pytest.raises(MediaError, match="the capture card went away"):
        pipeline.run(lambda i, m: None, lambda f: None)
    assert source.threads and threading.get_ident() not in source.threads
    assert not source.closed_while_reading
