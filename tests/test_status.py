"""What the broadcaster shows while it runs: a rich progress bar for a --fast import on a real
terminal (a pty), a status line for live streams, and plain lines when stderr is not a terminal."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.commands import status
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample.mp4"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run_on_a_terminal(*args: str) -> tuple[int, str]:
    """Run `streamer broadcast ARGS` with stderr on a pty; (exit status, what it showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", "broadcast", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"},
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    shown = bytearray()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        shown += data
    os.close(master)
    return proc.wait(60), ANSI.sub("", shown.decode(errors="replace"))


def test_an_import_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    code, shown = _run_on_a_terminal(
        str(SAMPLE),
        "--feed",
        str(tmp_path / "feed"),
        "--fast",
        "--reencode",
        "--size",
        "160x90",
        "--preset",
        "ultrafast",
        "--no-swarm",
    )
    assert code == 0, shown
    assert "10.0/10.0 s" in shown and "100%" in shown, shown
    # log lines print above the bar: header, 100 parts of 0.1 s (3 frames at 30 fps), end
    assert "stream ended: 102 blocks" in shown


def test_a_live_stream_shows_a_status_line_on_a_terminal(tmp_path: Path) -> None:
    code, shown = _run_on_a_terminal(
        "test",
        "--feed",
        str(tmp_path / "feed"),
        "--duration",
        "2",
        "--size",
        "160x96",
        "--preset",
        "ultrafast",
        "--no-swarm",
    )
    assert code == 0, shown
    assert "live 0:00:0" in shown and "0 peers" in shown and "encoder" in shown, shown


def test_lines_for_live_and_import() -> None:
    stats = {
        "state": "live",
        "stream_time_s": 10.0,
        "byte_length": 2_500_000,
        "encoder_speed": 1.0,
        "peers": 3,
        "bytes_up": 5_000_000,
        "length": 11,
        "mode": "copy",
    }
    assert status.status_line(stats, 75) == (
        "live 0:01:15 | 2.00 Mbit/s | copy 1.00x | 3 peers | upload 2.00x | 11 blocks"
    )
    stats["unreplicated_blocks"] = 2  # the swarm's view of blocks only the broadcaster holds
    assert status.status_line(stats, 75) == (
        "live 0:01:15 | 2.00 Mbit/s | copy 1.00x | 3 peers | upload 2.00x "
        "| 2 blocks held by no viewer | 11 blocks"
    )
    assert status.import_line({"stream_time_s": 30.0}, 60.0, 10.0) == (
        "import 30.0/60.0 s (50%) at 3.00x realtime, ETA 0:00:10"
    )


@pytest.mark.parametrize("total", [None, 60.0])
async def test_plain_lines_when_not_a_terminal(monkeypatch, total) -> None:
    monkeypatch.setattr(status, "PLAIN_EVERY_S", 0.01)
    out = io.StringIO()
    task = asyncio.create_task(
        status.show_status(lambda: {"state": "live", "stream_time_s": 6.0}, total, stream=out)
    )
    await eventually(lambda: out.getvalue().count("\n") >= 2, "two status lines")
    task.cancel()
    lines = out.getvalue().splitlines()
    assert all(("import 6.0/60.0 s" if total else "live 0:00:00") in line for line in lines)
    assert "\x1b" not in out.getvalue()
