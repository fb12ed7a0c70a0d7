"""Passthrough from files through `streamer broadcast`: H.264 + AAC with keyframes on the grid is
copied by itself (no decode, no encode) and plays back; --reencode forces encoding; irregular
keyframes and other codecs fall back to encoding with one line saying why."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from streamer.core.feed import Feed
from streamer.media.format import Segment, StreamHeader
from tests.fixtures_media import decode, make_clip

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample.mp4"  # H.264 High + AAC-LC, a keyframe every 2 s, 10 s


def streamer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamer", "broadcast", *args, "--no-swarm"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _stream(feed_dir: Path) -> tuple[StreamHeader, list[Segment]]:
    with Feed.open(feed_dir) as feed:
        feed.verify_all()
        return StreamHeader.decode(feed.get(0)), [
            Segment.decode(feed.get(i)) for i in range(1, feed.length)
        ]


def _video_packets(data: bytes) -> list[bytes]:
    with av.open(io.BytesIO(data)) as container:
        return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]


def test_a_file_on_the_grid_is_copied_by_itself_and_plays(tmp_path: Path) -> None:
    result = streamer(str(SAMPLE), "--feed", str(tmp_path / "feed"), "--fast")
    assert result.returncode == 0, result.stderr
    assert "copying the input's H.264/AAC, 2 s segments" in result.stderr
    header, segments = _stream(tmp_path / "feed")
    assert header.extra["preset"] == "copy" and header.segment_duration == 2.0
    assert header.mime.startswith('video/mp4; codecs="avc1.64') and header.channels == 1
    *media, end = segments
    assert [s.pts for s in media] == pytest.approx([0, 2, 4, 6, 8])
    assert end.end and end.pts == pytest.approx(10.0)
    packets = _video_packets(SAMPLE.read_bytes())
    decoded = decode(header.init + b"".join(s.data for s in media))
    assert len(decoded.video_times) == len(packets) == 300
    assert decoded.video_times[0] == pytest.approx(header.extra["media_delay"])
    # The very same H.264 access units: nothing was re-encoded.
    assert _video_packets(header.init + media[1].data) == packets[60:120]
    for segment in media:
        assert decode(header.init + segment.data).keyframes[0]


def test_reencode_forces_encoding(tmp_path: Path) -> None:
    result = streamer(
        str(SAMPLE),
        "--feed",
        str(tmp_path / "feed"),
        "--fast",
        "--reencode",
        "--duration",
        "2",
        "--preset",
        "ultrafast",
    )
    assert result.returncode == 0, result.stderr
    header, segments = _stream(tmp_path / "feed")
    assert header.extra["preset"] == "ultrafast" and header.segment_duration == 1.0


@pytest.mark.parametrize(
    ("make", "options", "why"),
    [
        (
            lambda d: SAMPLE,
            ["--segment", "1"],
            "its keyframes are 2.00, 2.00, 2.00 s apart, not every 1 s",
        ),
        (
            lambda d: make_clip(d / "clip.mkv", video="mpeg4", seconds=1.0),
            [],
            "its video is mpeg4, not H.264",
        ),
        (lambda d: make_clip(d / "clip.mp4", audio=None, seconds=1.0), [], "it has no audio track"),
    ],
    ids=["irregular-keyframes", "mpeg4", "no-audio"],
)
def test_copy_falls_back_to_encoding_saying_why(tmp_path: Path, make, options, why) -> None:
    source = make(tmp_path)
    result = streamer(
        str(source),
        "--feed",
        str(tmp_path / "feed"),
        "--fast",
        "--copy",
        "--duration",
        "1",
        *options,
    )
    assert result.returncode == 0, result.stderr
    reasons = [line for line in result.stderr.splitlines() if line.startswith("re-encoding: ")]
    assert len(reasons) == 1 and why in reasons[0], result.stderr
    header, _ = _stream(tmp_path / "feed")
    assert header.extra["preset"] == "veryfast"


def test_copy_with_encoder_options_is_refused(tmp_path: Path) -> None:
    result = streamer(str(SAMPLE), "--feed", str(tmp_path / "feed"), "--copy", "--size", "320x180")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "streamer: error: --copy keeps the input's pictures as they are; --size needs "
        "re-encoding (leave out --copy)"
    ]
    assert not (tmp_path / "feed").exists()


def test_a_copied_stream_resumes_as_a_copy(tmp_path: Path) -> None:
    feed_dir = tmp_path / "feed"
    first = streamer(str(SAMPLE), "--feed", str(feed_dir), "--fast", "--duration", "4")
    assert first.returncode == 0, first.stderr
    second = streamer(str(SAMPLE), "--feed", str(feed_dir), "--fast", "--duration", "4")
    assert second.returncode == 0, second.stderr
    header, segments = _stream(feed_dir)
    media = [s for s in segments if not s.end]
    assert [s.pts for s in media] == pytest.approx([0, 2, 4, 6])
    assert [s.discontinuity for s in media] == [False, False, True, False]
    refused = streamer(str(SAMPLE), "--feed", str(feed_dir), "--fast", "--reencode")
    assert refused.returncode == 1 and "--reencode cannot continue it" in refused.stderr
