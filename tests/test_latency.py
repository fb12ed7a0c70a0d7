"""The rules that keep the delay behind live short, sans-IO: windows counted in seconds of media
whatever the block size, and one round trip per hop at the live edge (a new block announced
before the length that reveals it, then asked for together with that upgrade)."""

from __future__ import annotations

from collections.abc import Callable

from streamer.core import wire
from streamer.core.admission import UploadAdmission, blocks_of
from streamer.core.replication import PeerMisbehaved
from streamer.core.scheduler import Replicator, ReplicatorConfig
from tests.test_replication import Net, append, block, held
from tests.test_replication import keys as keys  # noqa: F401 - fixtures used by `make`
from tests.test_replication import make as make  # noqa: F401


def _message(chunk: bytes) -> wire.Message:
    return wire.decode_message(chunk[1:])


class _Feed:
    """Just what UploadAdmission reads of a viewer's feed."""

    writable = False
    length = 100
    byte_length = 100 * 1000


def test_windows_are_seconds_of_media_whatever_the_block_size() -> None:
    assert blocks_of(4.0, 1.0) == 4 and blocks_of(4.0, 0.2) == 20 and blocks_of(0.1, 1.0) == 1
    parts = ReplicatorConfig(block_duration=0.2)
    assert parts.blocks(parts.playback_window) == 40 and parts.blocks(parts.live_window) == 20
    # Block 90 of 100 is 2 s behind live with 0.2 s parts: new (hot), so two answers may wait.
    viewer = UploadAdmission(_Feed(), parts)  # type: ignore[arg-type]
    assert viewer.admit("a", 90, 0.0) and viewer.admit("b", 90, 0.0)
    assert not viewer.admit("c", 90, 0.0)
    # With 1 s blocks the same block is 10 s behind: history, one answer may wait.
    seconds = UploadAdmission(_Feed(), ReplicatorConfig(block_duration=1.0))  # type: ignore[arg-type]
    assert seconds.admit("a", 90, 0.0) and not seconds.admit("b", 90, 0.0)


def test_the_playback_window_is_seconds_from_the_playhead(
    make: Callable[..., Replicator],  # noqa: F811
) -> None:
    net = Net()
    w = net.add(make(writer=True))
    append(net, w, [block(i) for i in range(30)])
    # 2 s of 0.2 s parts from the playhead: blocks 5..14, then the live edge (the newest 1 s).
    v = net.add(
        make(live_window=1.0, playback_window=2.0, block_duration=0.2, max_inflight_per_peer=64)
    )
    link = net.link(w, v)
    asked: list[int] = []

    def spy(chunk: bytes) -> bytes:
        msg = _message(chunk)
        if isinstance(msg, wire.Request) and msg.block is not None:
            asked.append(msg.block.index)
        return chunk

    link.tamper_ba = spy
    net.run(0.5)
    v.set_playhead(5, net.now)
    net.run(1)
    assert sorted(asked) == list(range(5, 15)) + list(range(25, 30))
    assert held(v) == sorted(asked)


def test_a_new_block_is_announced_before_the_length_that_reveals_it(
    make: Callable[..., Replicator],  # noqa: F811
) -> None:
    net = Net()
    w = net.add(make(writer=True, upgrade_with_block=True))
    relay = net.add(make(upgrade_with_block=True))
    end = net.add(make(upgrade_with_block=True))
    net.link(w, relay)
    link = net.link(relay, end)
    append(net, w, [block(0)])
    net.run(1)
    sent: list[wire.Message] = []

    def spy(chunk: bytes) -> bytes:
        sent.append(_message(chunk))
        return chunk

    link.tamper_ab = spy  # relay -> end
    append(net, w, [block(1)])
    net.run(1)
    kinds = [
        type(m).__name__
        for m in sent
        if isinstance(m, wire.Sync) or (isinstance(m, wire.Range) and m.start == 1)
    ]
    assert kinds[:2] == ["Range", "Sync"]


def test_the_newest_block_is_asked_for_with_the_upgrade_that_reveals_it(
    make: Callable[..., Replicator],  # noqa: F811
) -> None:
    net = Net()
    w = net.add(make(writer=True, upgrade_with_block=True))
    v = net.add(make(upgrade_with_block=True))
    link = net.link(w, v)
    append(net, w, [block(0)])
    net.run(1)
    requests: list[wire.Request] = []

    def spy(chunk: bytes) -> bytes:
        msg = _message(chunk)
        if isinstance(msg, wire.Request):
            requests.append(msg)
        return chunk

    link.tamper_ba = spy
    for i in range(1, 6):
        append(net, w, [block(i)])
        net.run(1)
    assert held(v) == list(range(6))
    # One request per new block, each carrying the upgrade: no upgrade-only round trip first.
    assert [(r.block.index if r.block else None, r.upgrade is not None) for r in requests] == [
        (i, True) for i in range(1, 6)
    ]


def test_a_late_block_asked_with_its_upgrade_does_not_hold_the_upgrade_back(
    make: Callable[..., Replicator],  # noqa: F811
) -> None:
    net = Net()
    w = net.add(make(writer=True, upgrade_with_block=True))
    slow = net.add(make(upgrade_with_block=True))
    other = net.add(make(upgrade_with_block=True))
    net.link(w, slow)
    net.link(slow, other)
    c = net.add(make(upgrade_with_block=True))
    stalled = net.link(slow, c)
    append(net, w, [block(0)])
    net.run(1)
    assert held(c) == [0]
    held_back: list[bytes] = []

    def hold_data(chunk: bytes) -> bytes | None:
        if isinstance(_message(chunk), wire.Data):
            held_back.append(chunk)
            return None
        return chunk

    stalled.tamper_ab = hold_data
    append(net, w, [block(1)])
    net.run(0.05)
    assert len(held_back) == 1 and [o.block for o in stalled.b.inflight.values()] == [1]
    net.link(other, c)
    # c asked `slow` for block 1 with the upgrade; slow's answer is held back. The upgrade, then
    # the block, come from `other` well before the request timeout (8 s).
    net.run(2)
    assert c.feed.length == 2 and held(c) == [0, 1]
    assert c.totals.timeouts == 0 and net.of(stalled.b, PeerMisbehaved) == []
