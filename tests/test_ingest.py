"""`streamer broadcast rtmp://... --listen` with Debian's ffmpeg publishing in place of OBS:
going live, passthrough and re-encoding, a publisher reconnecting (a discontinuity in the same
stream), a wrong key, a second publisher, nothing connecting, no video, and resuming later."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamer.core.feed import Feed
from streamer.media.format import (
    FLAG_DISCONTINUITY,
    FLAG_END,
    FLAG_INDEPENDENT,
    Segment,
    StreamHeader,
)
from tests.fixtures_media import decode

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


class Broadcast:
    """A `streamer broadcast` process whose stderr lines can be awaited."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "broadcast", *args],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, pattern: str, timeout: float = 60, nth: int = 1) -> re.Match:
        """The nth stderr line (seen so far or later) matching `pattern`."""
        deadline = time.monotonic() + timeout
        while True:
            matches = [m for line in list(self.lines) if (m := re.search(pattern, line))]
            if len(matches) >= nth:
                return matches[nth - 1]
            try:
                if self._new.get(timeout=max(0.01, deadline - time.monotonic())) is None:
                    matches = [m for line in list(self.lines) if (m := re.search(pattern, line))]
                    if len(matches) >= nth:
                        return matches[nth - 1]
                    raise AssertionError(f"exited without {pattern!r}:\n" + "\n".join(self.lines))
            except queue.Empty:
                raise AssertionError(
                    f"no {pattern!r} within {timeout} s:\n" + "\n".join(self.lines)
                ) from None

    def port(self) -> int:
        return int(self.wait_for(r"server rtmp://127\.0\.0\.1:(\d+)/live").group(1))

    def finish(self, timeout: float = 60) -> int:
        try:
            self.proc.wait(timeout)
        finally:
            self.proc.kill()
            self._reader.join(5)
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)


def publish(
    url: str,
    seconds: float,
    *,
    size: str = "320x180",
    gop: int = 30,
    audio: bool = True,
    video: bool = True,
    codec: str = "libx264",
    bframes: int = 0,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Debian's ffmpeg pushing a real-time test picture and tone, as OBS would."""
    inputs: list[str] = []
    codecs: list[str] = []
    if video:
        inputs += ["-re", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30"]
        codecs += ["-c:v", codec, "-g", str(gop)]
        if codec == "libx264":
            codecs += ["-preset", "ultrafast", "-bf", str(bframes)]
    if audio:
        inputs += ["-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
        codecs += ["-c:a", "aac", "-b:a", "96k"]
    result = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", *inputs, "-t", str(seconds)]
        + codecs
        + ["-f", "flv", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _stats(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def wait_until(check, what: str, timeout: float = 30) -> None:
    """Poll a file-based condition (the stats JSON is rewritten every second)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _stream(feed_dir: Path) -> tuple[StreamHeader, list[Segment]]:
    with Feed.open(feed_dir) as feed:
        feed.verify_all()
        header = StreamHeader.decode(feed.get(0))
        return header, [Segment.decode(feed.get(i)) for i in range(1, feed.length)]


@pytest.mark.parametrize("mode", ["--copy", "--reencode"])
def test_a_publisher_goes_live_reconnects_and_the_stream_continues(
    tmp_path: Path, mode: str
) -> None:
    feed_dir = tmp_path / "feed"
    extra = ["--size", "160x90", "--preset", "ultrafast"] if mode == "--reencode" else []
    stats = tmp_path / "stats.json"
    extra += ["--stats", str(stats)]
    run = Broadcast(
        "rtmp://127.0.0.1:0/live/secret",
        "--listen",
        "--timeout",
        "20",
        mode,
        *extra,
        "--feed",
        str(feed_dir),
        "--no-swarm",
    )
    url = f"rtmp://127.0.0.1:{run.port()}/live/secret"
    wrong = publish(url.replace("secret", "guess"), 1, check=False)
    assert wrong.returncode != 0
    run.wait_for("refused a publisher from 127.0.0.1: wrong stream key")
    bframes = 2 if mode == "--copy" else 0  # OBS's x264 default; a copy keeps them
    publish(url, 3, bframes=bframes)
    run.wait_for("the publisher disconnected")
    # What the publisher sent is appended now, not when it comes back: header + 3 segments of
    # ten 0.1 s parts each.
    wait_until(lambda: _stats(stats).get("stream_time_s", 0) >= 3.0 - 0.05, "the last GOP")
    assert _stats(stats)["length"] == 31
    publish(url, 2, bframes=bframes)
    run.wait_for("the publisher disconnected", timeout=30, nth=2)
    # Under load the encoder may still be finishing the tail: stop once it is appended.
    wait_until(lambda: _stats(stats).get("stream_time_s", 0) >= 5.0 - 0.05, "the second run's end")
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 0, run.stderr
    assert "Traceback" not in run.stderr
    header, segments = _stream(feed_dir)
    assert header.extra["preset"] == ("copy" if mode == "--copy" else "ultrafast")
    assert (header.width, header.height) == ((320, 180) if mode == "--copy" else (160, 90))
    *media, end = segments
    assert end.flags == FLAG_END
    assert [s.discontinuity for s in media].count(True) == 1
    cut = next(i for i, s in enumerate(media) if s.discontinuity)
    assert cut >= 10 and media[cut].pts == pytest.approx(3.0, abs=0.1)
    assert media[cut].flags == FLAG_DISCONTINUITY | FLAG_INDEPENDENT
    assert all(
        b.pts == pytest.approx(a.pts + a.duration) for a, b in zip(media, media[1:], strict=False)
    )
    assert media[-1].pts + media[-1].duration == pytest.approx(5.0, abs=0.1)
    decoded = decode(header.init + b"".join(s.data for s in media))
    assert len(decoded.video_times) == pytest.approx(150, abs=3)
    for segment in (media[0], media[cut]):
        assert decode(header.init + segment.data).keyframes[0]


def test_a_second_publisher_is_refused_while_one_is_live(tmp_path: Path) -> None:
    run = Broadcast(
        "rtmp://127.0.0.1:0/live/k",
        "--listen",
        "--timeout",
        "3",
        "--feed",
        str(tmp_path / "feed"),
        "--no-swarm",
    )
    url = f"rtmp://127.0.0.1:{run.port()}/live/k"
    first = threading.Thread(target=publish, args=(url, 4))
    first.start()
    try:
        run.wait_for("publisher 127.0.0.1 is live")
        second = publish(url, 1, check=False)
    finally:
        first.join()
    assert second.returncode != 0
    run.wait_for("refused a publisher from 127.0.0.1: another publisher is already live")
    run.wait_for("no publisher came back within 3 s; ending the stream")
    assert run.finish() == 0, run.stderr
    header, segments = _stream(tmp_path / "feed")
    assert segments[-1].end and not any(s.discontinuity for s in segments)
    assert sum(s.duration for s in segments) == pytest.approx(4.0, abs=0.1)


def test_nothing_connecting_within_the_timeout_is_one_line_and_no_feed(tmp_path: Path) -> None:
    run = Broadcast(
        "rtmp://127.0.0.1:0/live/k", "--listen", "--timeout", "1", "--feed", str(tmp_path / "f")
    )
    assert run.finish() == 1
    assert run.lines[-1].startswith("streamer: error: nothing was published to rtmp://")
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "f").exists()


def test_a_publisher_without_video_is_refused_in_one_line(tmp_path: Path) -> None:
    run = Broadcast(
        "rtmp://127.0.0.1:0/live/k", "--listen", "--timeout", "8", "--feed", str(tmp_path / "f")
    )
    url = f"rtmp://127.0.0.1:{run.port()}/live/k"
    publish(url, 1, video=False, check=False)
    run.wait_for("refused publisher 127.0.0.1: it sends no video")
    assert run.finish() == 1
    assert run.lines[-1].startswith("streamer: error: nothing was published")
    assert not (tmp_path / "f").exists()


def test_a_stream_ended_by_a_dropped_publisher_resumes_later(tmp_path: Path) -> None:
    feed_dir = tmp_path / "feed"
    for seconds in (3, 2):
        run = Broadcast(
            "rtmp://127.0.0.1:0/live/k",
            "--listen",
            "--timeout",
            "2",
            "--feed",
            str(feed_dir),
            "--no-swarm",
        )
        publish(f"rtmp://127.0.0.1:{run.port()}/live/k", seconds)
        run.wait_for("no publisher came back within 2 s")
        assert run.finish() == 0, run.stderr
        if seconds == 3:
            run.wait_for("copying the input's H.264/AAC")
        else:  # a copy can only continue a copy, and two seconds are too few to check the input
            run.wait_for("resuming the stream at 3.00 s")
    header, segments = _stream(feed_dir)
    assert header.extra["preset"] == "copy"
    assert [s.end for s in segments].count(True) == 2
    resumed = [s for s in segments if s.discontinuity]
    assert len(resumed) == 1 and resumed[0].pts == pytest.approx(3.0, abs=0.1)


def test_wrong_listen_urls_are_refused_in_one_line(tmp_path: Path) -> None:
    for url, message in (
        ("rtmp://127.0.0.1:0/live", "has no stream key"),
        ("http://127.0.0.1:0/live/k", "--listen takes rtmp://"),
        ("srt://127.0.0.1:0/live/k", "SRT"),
    ):
        run = Broadcast(url, "--listen", "--timeout", "1", "--feed", str(tmp_path / "f"))
        assert run.finish() == 1
        assert len(run.lines) == 1 and run.lines[0].startswith("streamer: error: "), run.stderr
        assert message in run.lines[0]
    assert not (tmp_path / "f").exists()


def test_a_passthrough_stream_refuses_a_publisher_with_other_settings(tmp_path: Path) -> None:
    run = Broadcast(
        "rtmp://127.0.0.1:0/live/k",
        "--listen",
        "--timeout",
        "20",
        "--copy",
        "--feed",
        str(tmp_path / "feed"),
        "--no-swarm",
    )
    url = f"rtmp://127.0.0.1:{run.port()}/live/k"
    publish(url, 3)
    run.wait_for("the publisher disconnected")
    publish(url, 1, size="640x360", check=False)
    run.wait_for("refused publisher 127.0.0.1: it sends h264 640x360 .* other encoder settings")
    publish(url, 2)
    run.wait_for("the publisher disconnected", nth=2)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 0, run.stderr
    header, segments = _stream(tmp_path / "feed")
    assert (header.width, header.height) == (320, 180)
    media = [s for s in segments if not s.end]
    assert [s.discontinuity for s in media if s.independent] == [False, False, False, True, False]
    decoded = decode(header.init + b"".join(s.data for s in media))
    assert len(decoded.video_times) == 150


def test_a_publisher_sending_another_codec_is_encoded_saying_why(tmp_path: Path) -> None:
    run = Broadcast(
        "rtmp://127.0.0.1:0/live/k",
        "--listen",
        "--timeout",
        "3",
        "--size",
        "160x90",
        "--feed",
        str(tmp_path / "feed"),
        "--no-swarm",
    )
    publish(f"rtmp://127.0.0.1:{run.port()}/live/k", 2, codec="flv")
    run.wait_for("no publisher came back")
    assert run.finish() == 0, run.stderr
    header, segments = _stream(tmp_path / "feed")
    assert header.mime.startswith('video/mp4; codecs="avc1.') and segments[-1].end
    assert sum(s.duration for s in segments) == pytest.approx(2.0, abs=0.1)


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = Broadcast(
            f"rtmp://127.0.0.1:{port}/live/k", "--listen", "--feed", str(tmp_path / "f")
        )
        assert run.finish() == 1
    assert run.lines == [
        f"streamer: error: cannot listen for RTMP on 127.0.0.1:{port}: Address already in use"
    ]
