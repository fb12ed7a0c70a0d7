"""NetworkReplicator under a burst of requests: a peer serving history answers a reader's whole
pipeline of block requests instead of calling them busy while its uplink is idle (in-memory
channels, which deliver a burst in one go as a data channel does)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from streamer.core import crypto
from streamer.core.feed import Feed
from streamer.net.channel import memory_channel_pair
from streamer.net.replicator import NetworkReplicator

KEY = crypto.key_pair(b"\x0b" * 32)
BLOCKS = 96


async def test_a_seeder_answers_a_burst_of_history_requests_without_refusing(
    tmp_path: Path,
) -> None:
    writer = Feed.create(tmp_path / "w", KEY)
    writer.append([os.urandom(4096) for _ in range(BLOCKS)])
    writer.close()
    # Opened without the secret key: a viewer holding the history, not the writer, so what it
    # answers is limited by max_queued_history (answers waiting for its uplink).
    seeder_feed = Feed.open(tmp_path / "w")
    reader_feed = Feed.open(tmp_path / "r", key=KEY.public_key, create=True)
    seeder = NetworkReplicator(seeder_feed, None)
    reader = NetworkReplicator(reader_feed, None, archive=True)
    await seeder.start()
    await reader.start()
    changed = asyncio.Event()
    reader_feed.add_listener(lambda _e: changed.set())
    a, b = memory_channel_pair(("seeder", "reader"))
    try:
        seeder.add_connection(a)
        reader.add_connection(b)
        while reader_feed.contiguous_length < BLOCKS or reader_feed.length < BLOCKS:
            await asyncio.wait_for(changed.wait(), 30)
            changed.clear()
        stats = seeder.stats()
        assert stats.blocks_up == BLOCKS
        # The reader keeps many requests in flight at once (4 KiB blocks); each found the
        # uplink free, so none was refused and re-asked a busy_backoff later.
        assert stats.uploads_refused == 0
    finally:
        await reader.stop()
        await seeder.stop()
        reader_feed.close()
        seeder_feed.close()
