"""The one stats shape (core.stats): rates sampled on a one-second tick of the time passed in, so
readers never skew each other; one ratio for the share from peers; the JSON every stats reader
gets has the keys the page and the tools use."""

from __future__ import annotations

from streamer.core.stats import NodeStats, RateMeter, ReplicationStats
from viewer.source import STATS_KEYS


def test_rates_come_from_samples_a_second_apart_and_reading_changes_nothing() -> None:
    meter = RateMeter()
    assert meter.rates == (0.0, 0.0)
    meter.sample(10.0, 0, 0)
    assert not meter.due(10.5)
    assert meter.due(11.0)
    meter.sample(11.0, 1000, 500)
    assert meter.rates == (1000.0, 500.0)
    assert meter.rates == meter.rates  # many readers, one answer
    meter.sample(12.0, 1000, 500)  # idle for a second: the window still holds the burst
    assert meter.rates == (500.0, 250.0)
    for t in range(13, 17):
        meter.sample(float(t), 1000, 500)
    assert meter.rates == (0.0, 0.0)  # the burst left the window


def test_the_share_from_peers_is_one_ratio_of_block_bytes() -> None:
    assert ReplicationStats().share_from_peers == 0.0
    stats = ReplicationStats(block_bytes_from_writer=1000, block_bytes_from_peers=3000)
    assert stats.share_from_peers == 0.75
    assert stats.as_json()["share_from_peers"] == 0.75


def test_every_reader_gets_the_agreed_keys() -> None:
    node = NodeStats(key="ab" * 32, length=5, blocks_have=4, byte_length=999, ended=True)
    body = node.as_json()
    assert set(STATS_KEYS) <= set(body)
    assert isinstance(body["peers"], int) and body["neighbours"] == []
    assert (body["length"], body["blocks_have"], body["ended"]) == (5, 4, True)
