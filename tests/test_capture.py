"""Screen capture under a real Xvfb display through `streamer broadcast screen:DISPLAY`, and the
capture device names of other platforms (avfoundation, dshow, gdigrab) parsed and refused on
Linux in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from streamer.core.errors import MediaError
from streamer.core.feed import Feed
from streamer.media.encoder import EncoderSettings
from streamer.media.format import Segment, StreamHeader
from streamer.media.pipeline import Pipeline
from streamer.media.sources import ScreenSource, capture_device, open_source, parse_source
from tests.fixtures_media import decode

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def display() -> Iterator[str]:
    """A real X server (Xvfb, 320x240) on a display number it picks and reports when ready."""
    read, write = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "320x240x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        with os.fdopen(read) as ready:
            number = ready.readline().strip()  # written once the server accepts clients
        assert number, "Xvfb did not start"
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_screen_is_broadcast(tmp_path: Path, display: str) -> None:
    feed_dir = tmp_path / "feed"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamer",
            "broadcast",
            f"screen:{display}",
            "--feed",
            str(feed_dir),
            "--duration",
            "2",
            "--fps",
            "15",
            "--preset",
            "ultrafast",
            "--no-swarm",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert f"screen {display}" in result.stderr
    with Feed.open(feed_dir) as feed:
        header = StreamHeader.decode(feed.get(0))
        segments = [Segment.decode(feed.get(i)) for i in range(1, feed.length)]
    assert (header.width, header.height, header.fps) == (320, 240, 15.0)
    *media, end = segments
    assert end.end and sum(s.duration for s in media) == pytest.approx(2.0, abs=0.15)
    decoded = decode(header.init + b"".join(s.data for s in media))
    assert len(decoded.video_times) == pytest.approx(30, abs=2)


@pytest.mark.parametrize(
    ("spec", "kind", "device"),
    [
        ("webcam", ("webcam", None), ("v4l2", "/dev/video0")),
        ("webcam:/dev/video2", ("webcam", "/dev/video2"), ("v4l2", "/dev/video2")),
        ("webcam:avfoundation:0", ("webcam", "avfoundation:0"), ("avfoundation", "0")),
        (
            "webcam:dshow:video=Integrated Camera",
            ("webcam", "dshow:video=Integrated Camera"),
            ("dshow", "video=Integrated Camera"),
        ),
        ("screen:99", ("screen", "99"), ("x11grab", ":99")),
        ("screen::0.0+100,200", ("screen", ":0.0+100,200"), ("x11grab", ":0.0+100,200")),
        (
            "screen:avfoundation:Capture screen 0",
            ("screen", "avfoundation:Capture screen 0"),
            ("avfoundation", "Capture screen 0"),
        ),
        ("screen:gdigrab:desktop", ("screen", "gdigrab:desktop"), ("gdigrab", "desktop")),
    ],
)
def test_capture_names_parse(spec: str, kind: tuple, device: tuple) -> None:
    assert parse_source(spec) == kind
    assert capture_device(*kind) == device


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("webcam:avfoundation:0", "this FFmpeg has no avfoundation input for the webcam"),
        ("webcam:dshow:video=Cam", "this FFmpeg has no dshow input for the webcam"),
        ("screen:gdigrab:desktop", "this FFmpeg has no gdigrab input for the screen"),
        ("screen::97", "cannot open screen :97"),
    ],
)
def test_capture_devices_missing_here_are_one_line(spec: str, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        open_source(spec)


def test_the_screen_with_a_microphone(display: str) -> None:
    """x11grab plus a real-time lavfi tone standing in for the ALSA microphone."""
    source = ScreenSource(
        display,
        "sine=frequency=440:sample_rate=48000,arealtime",
        "x11grab",
        "lavfi",
        {"framerate": "15"},
    )
    assert source.has_audio and (source.width, source.height) == (320, 240)
    settings = EncoderSettings(320, 240, Fraction(15), 300_000, 1.0, "ultrafast")
    pipeline = Pipeline(source, settings, duration=2.0)
    init, fragments = [], []
    pipeline.run(lambda data, mime: init.append(data), fragments.append)
    decoded = decode(init[0] + b"".join(f.data for f in fragments))
    assert len(decoded.video_times) == pytest.approx(30, abs=2)
    # the tone came through over most of the stream, not the silence a missing microphone gives
    assert (abs(decoded.audio) > 0.05).mean() > 0.5
