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
    # Cut into 0.1 s parts like an encoded stream: each keyframe starts an independent part, the
    # parts after it count back to it, and together they tile the timeline.
    assert header.version == 2 and header.part_duration == pytest.approx(0.1)
    assert header.parts_per_segment == 20 and len(media) == 100
    assert [s.pts for s in media if s.independent] == pytest.approx([0, 2, 4, 6, 8])
    assert [s.back for s in media] == list(range(20)) * 5
    assert [s.pts for s in media] == pytest.approx([i * 0.1 for i in range(100)])
    assert sum(s.duration for s in media) == pytest.approx(10.0)
    assert end.end and end.pts == pytest.approx(10.0)
    packets = _video_packets(SAMPLE.read_bytes())
    decoded = decode(header.init + b"".join(s.data for s in media))
    assert len(decoded.video_times) == len(packets) == 300
    assert decoded.video_times[0] == pytest.approx(header.extra["media_delay"])
    gops = [b"".join(s.data for s in media[i : i + 20]) for i in range(0, 100, 20)]
    # The very same H.264 access units: nothing was re-encoded.
    assert _video_packets(header.init + gops[1]) == packets[60:120]
    for gop in gops:
        assert decode(header.init + gop).keyframes[0]


def test_a_copy_with_parts_as_long_as_segments_has_one_block_per_gop(tmp_path: Path) -> None:
    result = streamer(str(SAMPLE), "--feed", str(tmp_path / "feed"), "--fast", "--part", "2")
    assert result.returncode == 0, result.stderr
    header, segments = _stream(tmp_path / "feed")
    media = [s for s in segments if not s.end]
    assert header.extra["preset"] == "copy" and header.parts_per_segment == 1
    assert [s.pts for s in media] == pytest.approx([0, 2, 4, 6, 8])
    assert all(s.independent for s in media)


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
    media = [s for s in segments if s.independent and not s.end]
    assert [s.pts for s in media] == pytest.approx([0, 2, 4, 6])
    assert [s.discontinuity for s in media] == [False, False, True, False]
    assert not any(s.discontinuity for s in segments if not s.independent)
    refused = streamer(str(SAMPLE), "--feed", str(feed_dir), "--fast", "--reencode")
    assert refused.returncode == 1 and "--reencode cannot continue it" in refused.stderr
    other_part = streamer(str(SAMPLE), "--feed", str(feed_dir), "--fast", "--part", "0.4")
    assert other_part.returncode == 1 and "uses --part 0.1" in other_part.stderr


def test_a_copied_v1_stream_resumes_in_v1(tmp_path: Path) -> None:
    first = streamer(str(SAMPLE), "--feed", str(tmp_path / "v2"), "--fast", "--duration", "4",
                     "--part", "2")
    assert first.returncode == 0, first.stderr
    header, segments = _stream(tmp_path / "v2")
    # The same stream as a v1 broadcaster wrote it: one v1 block per GOP.
    header.version, header.part_duration, header.parts_per_segment = 1, None, None
    for segment in segments:
        segment.version = 1
    with Feed.create(tmp_path / "v1") as feed:
        feed.append([header.encode(), *(s.encode() for s in segments)])
    refused = streamer(str(SAMPLE), "--feed", str(tmp_path / "v1"), "--fast", "--part", "0.2")
    assert refused.returncode == 1 and "format v1" in refused.stderr
    again = streamer(str(SAMPLE), "--feed", str(tmp_path / "v1"), "--fast", "--duration", "4")
    assert again.returncode == 0, again.stderr
    with Feed.open(tmp_path / "v1") as feed:
        added = [feed.get(i) for i in range(len(segments) + 1, feed.length)]
    assert [b[4] for b in added] == [1, 1, 1]  # two v1 GOP blocks, then a v1 end marker
    resumed = [Segment.decode(b) for b in added]
    assert resumed[0].discontinuity and resumed[0].pts == pytest.approx(4.0) and resumed[-1].end
