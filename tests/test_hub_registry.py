"""The hub's sans-IO parts as plain unit tests: channel registry (limits, fan-out, dropping slow
subscribers), path parsing, the rejection table and metrics rendering."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from streamer.hub.metrics import Metrics, render_metrics
from streamer.hub.registry import ChannelRegistry, parse_channels
from streamer.hub.rejections import REJECTION_REASONS, Refused, Rejection

ROOT = Path(__file__).resolve().parents[1]
SANS_IO_MODULES = ("config", "messages", "metrics", "ratelimit", "registry", "rejections")
IO_LIBRARIES = {"asyncio", "aiohttp", "aiortc", "av", "socket", "redis", "uvloop"}


class FakeSink:
    """A subscriber whose buffer holds `room` frames."""

    def __init__(self, room: int = 10) -> None:
        self.frames: list[bytes] = []
        self.room = room

    def offer(self, frame: bytes) -> bool:
        if len(self.frames) >= self.room:
            return False
        self.frames.append(frame)
        return True


def registry(channels: int = 4, subscribers: int = 3) -> ChannelRegistry[FakeSink]:
    return ChannelRegistry(max_channels_per_subscription=channels, max_subscribers_per_channel=subscribers)


@pytest.mark.parametrize("module", SANS_IO_MODULES)
def test_sans_io_hub_modules_import_no_io_library(module):
    tree = ast.parse((ROOT / "streamer" / "hub" / f"{module}.py").read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0] for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & IO_LIBRARIES


def test_publish_reaches_the_channel_subscribers_only():
    reg = registry()
    a, b, other = FakeSink(), FakeSink(), FakeSink()
    assert reg.subscribe(a, "app", ["x"]) is None
    assert reg.subscribe(b, "app", ["x", "y"]) is None
    assert reg.subscribe(other, "elsewhere", ["x"]) is None
    assert reg.publish("app/x", b"one") == (2, [])
    assert reg.publish("app/y", b"two") == (1, [])
    assert reg.publish("app/nobody", b"three") == (0, [])
    assert a.frames == [b"one"] and b.frames == [b"one", b"two"] and other.frames == []


def test_repeated_channels_count_once():
    reg = registry(channels=2)
    sink = FakeSink()
    assert reg.subscribe(sink, "app", ["x", "x", "y", "x"]) is None
    assert reg.publish("app/x", b"m") == (1, [])
    assert sink.frames == [b"m"]


def test_too_many_channels_refuses_the_whole_subscription():
    reg = registry(channels=2)
    refused = reg.subscribe(FakeSink(), "app", ["a", "b", "c"])
    assert isinstance(refused, Refused) and refused.reason is Rejection.TOO_MANY_CHANNELS
    assert "at most 2" in refused.message
    assert not reg.channels and not reg.subscribers


def test_full_channel_refuses_and_registers_nothing():
    reg = registry(subscribers=1)
    assert reg.subscribe(FakeSink(), "app", ["busy"]) is None
    late = FakeSink()
    refused = reg.subscribe(late, "app", ["free", "busy"])
    assert isinstance(refused, Refused) and refused.reason is Rejection.CHANNEL_FULL
    assert "app/busy" in refused.message
    assert "app/free" not in reg.channels and late not in reg.subscribers


def test_unsubscribe_forgets_empty_channels_and_frees_room():
    reg = registry(subscribers=1)
    first = FakeSink()
    reg.subscribe(first, "app", ["a", "b"])
    assert reg.unsubscribe(first) is True
    assert reg.unsubscribe(first) is False
    assert reg.channels == {} and len(reg.subscribers) == 0
    assert reg.subscribe(FakeSink(), "app", ["a"]) is None


def test_a_subscriber_that_cannot_keep_up_is_dropped_from_every_channel():
    reg = registry()
    slow, fast = FakeSink(room=1), FakeSink()
    reg.subscribe(slow, "app", ["a", "b"])
    reg.subscribe(fast, "app", ["a"])
    assert reg.publish("app/a", b"1") == (2, [])
    assert reg.publish("app/a", b"2") == (2, [slow])
    assert slow not in reg.subscribers and "app/b" not in reg.channels
    assert reg.publish("app/a", b"3") == (1, [])
    assert fast.frames == [b"1", b"2", b"3"] and slow.frames == [b"1"]


def test_heartbeats_reach_everyone_and_drop_the_full():
    reg = registry()
    full, idle = FakeSink(room=0), FakeSink()
    reg.subscribe(full, "app", ["a"])
    reg.subscribe(idle, "other", ["b"])
    assert reg.offer_all(b":hb") == [full]
    assert idle.frames == [b":hb"] and list(reg.subscribers) == [idle]


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        ("app/a", ("app", ["a"])),
        ("my.app/x_1,y-2", ("my.app", ["x_1", "y-2"])),
    ],
)
def test_valid_channel_paths_parse(tail, expected):
    assert parse_channels(tail) == expected


@pytest.mark.parametrize("tail", ["app", "app/a/b", "ap p/a", "app/a,,b", "app/" + "x" * 129, "/a"])
def test_invalid_channel_paths_are_bad_names(tail):
    refused = parse_channels(tail)
    assert isinstance(refused, Refused) and refused.reason is Rejection.BAD_NAME


def test_every_rejection_has_a_distinct_label_and_an_error_status():
    assert len(set(REJECTION_REASONS)) == len(Rejection)
    assert all(400 <= r.status < 600 for r in Rejection)


def test_metrics_render_rows_only_for_the_parts_present():
    metrics = Metrics()
    metrics.rejections[Rejection.BAD_JSON.label] += 2
    text = render_metrics(metrics, subscribers=3, channels=2)
    assert "# TYPE hub_subscribers gauge\nhub_subscribers 3\n" in text
    assert "hub_channels 2\n" in text
    assert 'hub_rejections_total{reason="bad_json"} 2\n' in text
    assert "hub_names" not in text and "hub_redis" not in text
    text = render_metrics(metrics, subscribers=0, channels=0, names=5, redis_connected=True)
    assert "hub_names 5\n" in text and "hub_redis_connected 1\n" in text
