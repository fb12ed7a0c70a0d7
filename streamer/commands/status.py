"""What `streamer broadcast` shows while it runs: a progress bar for an import (position /
duration, speed, ETA) or one status line refreshed in place for a live stream (uptime, bit rate,
encoder speed, peers, upload ratio), both on a terminal; plain lines now and then when stderr is
not one. It only reads the broadcaster's stats snapshot (Broadcaster.snapshot)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

TTY_REFRESH_S = 0.5
PLAIN_EVERY_S = 10.0


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _bits(rate: float) -> str:
    return f"{rate / 1e6:.2f} Mbit/s" if rate >= 1e6 else f"{rate / 1e3:.0f} kbit/s"


def status_line(stats: dict[str, Any], uptime: float) -> str:
    """One line about a live stream from a stats snapshot."""
    stream_s = stats.get("stream_time_s") or 0.0
    byte_length = stats.get("byte_length") or 0
    parts = [
        f"{stats.get('state', '?')} {_clock(uptime)}",
        f"{_bits(byte_length * 8 / stream_s) if stream_s else '-'}",
        f"{'copy' if stats.get('mode') == 'copy' else 'encoder'} {stats.get('encoder_speed', 0):.2f}x",
        f"{stats.get('peers', 0)} peers",
    ]
    if byte_length:
        parts.append(f"upload {stats.get('bytes_up', 0) / byte_length:.2f}x")
    if "unreplicated_blocks" in stats:  # core.stats: blocks no neighbour holds yet
        parts.append(f"{stats['unreplicated_blocks']} blocks held by no viewer")
    parts.append(f"{stats.get('length', 0)} blocks")
    return " | ".join(parts)


def import_line(stats: dict[str, Any], total: float, elapsed: float) -> str:
    done = min(total, (stats.get("stream_time_s") or 0.0))
    speed = done / elapsed if elapsed > 0 else 0.0
    eta = f"ETA {_clock((total - done) / speed)}" if speed > 0 else "ETA -"
    return f"import {done:.1f}/{total:.1f} s ({done / total:.0%}) at {speed:.2f}x realtime, {eta}"


@contextlib.contextmanager
def _logs_through(stream: TextIO) -> Iterator[None]:
    """Route the root logger's stderr handlers through `stream` (rich's proxy) meanwhile, so log
    lines print above the live display instead of through it."""
    moved = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (
            sys.__stderr__,
            getattr(stream, "rich_proxied_file", None),
        ):
            moved.append((handler, handler.setStream(stream)))
    try:
        yield
    finally:
        for handler, old in moved:
            handler.setStream(old)


async def show_status(
    snapshot: Callable[[], dict[str, Any]],
    total: float | None,
    *,
    stream: TextIO | None = None,
    tty: bool | None = None,
) -> None:
    """Show progress until cancelled. `total`: seconds of an import (None for a live stream)."""
    stream = stream or sys.stderr
    tty = stream.isatty() if tty is None else tty
    started = time.monotonic()
    if not tty:
        while True:
            await asyncio.sleep(PLAIN_EVERY_S)
            stats = snapshot()
            elapsed = time.monotonic() - started
            line = import_line(stats, total, elapsed) if total else status_line(stats, elapsed)
            print(line, file=stream, flush=True)
    console = Console(file=stream, force_terminal=True)
    if total:
        progress = Progress(
            TextColumn("import"),
            BarColumn(),
            TextColumn("{task.completed:.1f}/{task.total:.1f} s"),
            TaskProgressColumn(),
            TextColumn("{task.fields[speed]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        task = progress.add_task("import", total=total, speed="")
        with progress, _logs_through(sys.stderr):
            try:
                while True:
                    stats = snapshot()
                    elapsed = time.monotonic() - started
                    done = min(total, stats.get("stream_time_s") or 0.0)
                    speed = f"{done / elapsed:.2f}x" if elapsed > 0 else ""
                    progress.update(task, completed=done, speed=speed)
                    await asyncio.sleep(TTY_REFRESH_S)
            finally:
                stats = snapshot()
                progress.update(task, completed=min(total, stats.get("stream_time_s") or 0.0))
    with (
        Live(
            Text(""), console=console, refresh_per_second=4, transient=True, redirect_stderr=True
        ) as live,
        _logs_through(sys.stderr),
    ):
        while True:
            live.update(Text(status_line(snapshot(), time.monotonic() - started)))
            await asyncio.sleep(TTY_REFRESH_S)
