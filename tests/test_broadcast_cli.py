"""`streamer broadcast` through a subprocess: a fast import, resuming, Ctrl-C, and bad input that
must give one line, a non-zero exit, no traceback and no appended block."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from streamer.core import crypto, keyfile
from streamer.core.feed import Feed
from streamer.media.format import Segment, StreamHeader
from streamer.media.testpattern import TestPattern

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample.mp4"


def streamer(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("streamer: error: ")
    assert expected in lines[0]


def test_import_a_file_fast_then_resume_it(tmp_path: Path) -> None:
    feed_dir, stats = tmp_path / "feed", tmp_path / "stats.json"
    first = streamer(
        "broadcast",
        str(SAMPLE),
        "--feed",
        str(feed_dir),
        "--fast",
        "--duration",
        "3",
        "--size",
        "160x90",
        "--bitrate",
        "300k",
        "--no-swarm",
        "--stats",
        str(stats),
    )
    assert first.returncode == 0, first.stderr
    key = first.stdout.splitlines()[0]
    assert len(bytes.fromhex(key)) == 32
    snapshot = json.loads(stats.read_text())
    assert snapshot["key"] == key and snapshot["state"] == "ended"
    assert snapshot["length"] == 32 and snapshot["peers"] == 0  # 30 parts of 0.1 s

    second = streamer(
        "broadcast", str(SAMPLE), "--feed", str(feed_dir), "--fast", "--duration", "2",
        "--part", "0.1",
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[0] == key
    assert streamer("feed", "verify", str(feed_dir)).returncode == 0
    with Feed.open(feed_dir) as feed:
        header = StreamHeader.decode(feed.get(0))
        segments = [Segment.decode(feed.get(i)) for i in range(1, feed.length)]
    assert (header.width, header.height) == (160, 90)
    assert [s.pts for s in segments if s.independent] == pytest.approx([0, 1, 2, 3, 4])
    assert len(segments) == 30 + 1 + 20 + 1
    assert segments[31].discontinuity and segments[31].independent and segments[-1].end
    # Both runs export as one MP4: the end marker between them carries no media and is skipped.
    exported = subprocess.run(
        [sys.executable, "-m", "viewer", "export", str(feed_dir), str(tmp_path / "all.mp4")],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert exported.returncode == 0, exported.stderr
    with av.open(str(tmp_path / "all.mp4")) as mp4:
        assert mp4.duration / 1e6 == pytest.approx(5.0, abs=0.1)
    refused = streamer("broadcast", str(SAMPLE), "--feed", str(feed_dir), "--part", "0.5")
    assert refused.returncode != 0 and "--part 0.1" in refused.stderr


def test_loop_repeats_a_file_with_a_continuing_timeline(tmp_path: Path) -> None:
    feed_dir = tmp_path / "feed"
    result = streamer(
        "broadcast",
        str(SAMPLE),
        "--feed",
        str(feed_dir),
        "--loop",
        "--fast",
        "--duration",
        "12",
        "--size",
        "64x36",
        "--segment",
        "2",
        "--no-swarm",
    )
    assert result.returncode == 0, result.stderr
    with Feed.open(feed_dir) as feed:
        segments = [Segment.decode(feed.get(i)) for i in range(1, feed.length)]
    assert [s.pts for s in segments if s.independent or s.end] == pytest.approx(
        [0, 2, 4, 6, 8, 10, 12]
    )
    assert segments[-1].end and not any(s.discontinuity for s in segments)


def test_ctrl_c_ends_the_stream_cleanly(tmp_path: Path) -> None:
    feed_dir, stats = tmp_path / "feed", tmp_path / "stats.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamer",
            "broadcast",
            "test",
            "--feed",
            str(feed_dir),
            "--size",
            "160x96",
            "--segment",
            "0.5",
            "--preset",
            "ultrafast",
            "--no-swarm",
            "--stats",
            str(stats),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        length = 0
        while length < 3 and time.monotonic() < deadline:  # wait for two segments to be appended
            try:
                length = json.loads(stats.read_text())["length"]
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)
        assert length >= 3
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert streamer("feed", "verify", str(feed_dir)).returncode == 0
    with Feed.open(feed_dir) as feed:
        last = Segment.decode(feed.get(feed.length - 1))
        before = Segment.decode(feed.get(feed.length - 2))
    assert last.end and last.pts == pytest.approx(before.pts + before.duration)
    assert json.loads(stats.read_text())["state"] == "ended"


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=48000, layout="mono")
        for i in range(10):
            frame = TestPattern.audio_frame(i * 1024, 1024)
            frame.pts = i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


BAD_OPTIONS = [
    (["--size", "0x0"], "out of range"),
    (["--size", "641x360"], "odd dimension"),
    (["--size", "big"], "not WIDTHxHEIGHT"),
    (["--fps", "0"], "--fps 0 is out of range"),
    (["--fps", "fast"], "not a number"),
    (["--bitrate", "1"], "out of range"),
    (["--bitrate", "lots"], "not a bit rate"),
    (["--segment", "0"], "--segment 0 is out of range"),
    (["--duration", "-1"], "--duration -1 is out of range"),
    (["--preset", "warp"], "not an x264 preset"),
    (["--upload-budget", "0.5"], "--upload-budget '0.5' must be a number of stream copies"),
    (["--timeout", "5"], "--timeout is how long --listen waits for a publisher; add --listen"),
    (["--listen"], "--listen takes rtmp://HOST:PORT/APP/KEY"),
    (["--copy", "--size", "320x180"], "--copy keeps the input's pictures as they are"),
    (["--linger", "-1"], "--linger -1 is out of range"),
    (["--loop"], None),
    (["--audio", "hw:0"], None),
]


@pytest.mark.parametrize(
    ("options", "message"), BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_unusable_options_are_refused_before_any_feed_exists(
    tmp_path: Path, options: list[str], message
) -> None:
    source = "test" if message is None else str(SAMPLE)
    result = streamer("broadcast", source, "--feed", str(tmp_path / "feed"), "--fast", *options)
    _one_line_error(result, message or f"{options[0]} ")
    assert not (tmp_path / "feed").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.mp4", "does not exist"),
        (lambda d: _write(d / "readme.txt", b"not a video at all\n" * 20), "is not a media file"),
        (lambda d: _write(d / "garbage.mkv", os.urandom(20_000)), "not a media file"),
        (lambda d: _audio_only(d / "song.m4a"), "has no video stream"),
        (lambda d: Path("webcam:/dev/video97"), "no webcam at /dev/video97"),
    ],
    ids=["missing", "text", "garbage", "audio-only", "no-webcam"],
)
def test_bad_sources_are_refused_before_any_feed_exists(tmp_path: Path, make, message: str) -> None:
    result = streamer("broadcast", str(make(tmp_path)), "--feed", str(tmp_path / "feed"), "--fast")
    _one_line_error(result, message)
    assert not (tmp_path / "feed").exists()


def test_a_feed_of_another_key_is_refused_and_left_alone(tmp_path: Path) -> None:
    mine, theirs = tmp_path / "mine.key", tmp_path / "theirs.key"
    keyfile.write_secret_key(mine, crypto.key_pair(b"\x01" * 32).secret_key)
    keyfile.write_secret_key(theirs, crypto.key_pair(b"\x02" * 32).secret_key)
    feed_dir = tmp_path / "feed"
    ok = streamer(
        "broadcast",
        "test",
        "--feed",
        str(feed_dir),
        "--key",
        str(mine),
        "--size",
        "64x48",
        "--fast",
        "--duration",
        "1",
        "--no-swarm",
    )
    assert ok.returncode == 0, ok.stderr
    with Feed.open(feed_dir) as feed:
        before = (feed.length, feed.tree_hash())
    refused = streamer(
        "broadcast",
        "test",
        "--feed",
        str(feed_dir),
        "--key",
        str(theirs),
        "--fast",
        "--duration",
        "1",
    )
    _one_line_error(refused, "does not belong")
    without_key = streamer(
        "broadcast", "test", "--feed", str(feed_dir), "--fast", "--duration", "1"
    )
    _one_line_error(without_key, "pass the same --key")
    other_size = streamer(
        "broadcast",
        "test",
        "--feed",
        str(feed_dir),
        "--key",
        str(mine),
        "--size",
        "128x96",
        "--fast",
        "--duration",
        "1",
    )
    _one_line_error(other_size, "uses --size 64x48")
    with Feed.open(feed_dir) as feed:
        assert (feed.length, feed.tree_hash()) == before


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
