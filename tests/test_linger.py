"""The broadcaster's last words: with blocks that no viewer holds it leaves with one warning line
naming them, and with nobody connected it does not wait for anyone."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from streamer.commands.broadcast import _linger
from streamer.net.replicator import NetworkReplicator
from tests.fixtures_viewer import write_feed


async def test_leaving_with_blocks_only_here_warns_in_one_line(tmp_path: Path, caplog) -> None:
    feed = write_feed(tmp_path / "w", [b"header", b"one", b"two"])
    net = NetworkReplicator(feed, None)
    await net.start()
    try:
        with caplog.at_level(logging.INFO, logger="streamer.broadcast"):
            # Nobody is connected to fetch them: it must not linger its 30 s.
            await asyncio.wait_for(_linger(net, 30.0, asyncio.Event()), 20.0)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert warnings[0].startswith("warning: leaving while blocks 0..2 exist only on this disk")
    finally:
        await net.stop()
        feed.close()
