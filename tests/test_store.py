"""viewer.store: --keep/--max-store parsing, and the keeper evicting a real sparse feed down to its
bound (oldest first, never the header or the live edge), saying so in one line, and stopping
history while full."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.core.errors import UsageError
from streamer.net.replicator import NetworkReplicator
from tests.fixtures_viewer import sparse_copy, write_feed
from viewer.store import StoreKeeper, parse_keep_option, parse_store_size

BLOCK = 300_000


def test_sizes_and_keep_parse_or_fail_with_one_line() -> None:
    assert parse_store_size("500M") == 500 << 20
    assert parse_store_size("4G") == 4 << 30
    assert parse_store_size("1.5GiB") == int(1.5 * (1 << 30))
    assert parse_keep_option("all") is None and parse_keep_option("2") == 2
    for bad in ("lots", "5X", "100k"):
        with pytest.raises(UsageError):
            parse_store_size(bad)
    with pytest.raises(UsageError):
        parse_keep_option("-3")


async def test_the_keeper_evicts_the_oldest_blocks_down_to_its_bound(tmp_path: Path) -> None:
    writer = write_feed(tmp_path / "w", [bytes([i]) * BLOCK for i in range(12)])
    feed = sparse_copy(writer, tmp_path / "v", list(range(12)))
    writer.close()
    net = NetworkReplicator(feed, None)
    lines: list[str] = []
    keeper = StoreKeeper(net, keep=3, max_store=6 * BLOCK, say=lines.append)
    await net.start()
    try:
        dropped = await keeper.check()
        # 12 blocks held, room for 6 with one to spare: 7 go, oldest first, never the header
        # or the newest four (the live edge).
        assert dropped == [1, 2, 3, 4, 5, 6, 7]
        assert [i for i in range(12) if feed.has(i)] == [0, 8, 9, 10, 11]
        assert feed.held_bytes() <= 6 * BLOCK
        assert net.replicator.backfill.full
        assert len(lines) == 1 and "evicted blocks 1..7" in lines[0], lines
        assert net.stats().evicted == 7
        assert await keeper.check() == []  # under its bound now
    finally:
        await keeper.stop()
        await net.stop()
        feed.close()
