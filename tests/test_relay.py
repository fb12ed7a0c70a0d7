"""Live push between in-memory peers on a virtual clock (core.relay over real feeds and proofs):
blocks travel by push down a loop-free tree, pushed bytes are verified before they are stored or
pushed on, and data pushed to a peer that did not subscribe (or a tampered push) gets the pusher
dropped and banned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from streamer.core import crypto, wire
from streamer.core.feed import Feed
from streamer.core.replication import BlockVerified, PeerMisbehaved, Session
from streamer.core.scheduler import Replicator, ReplicatorConfig
from tests.test_replication import Net, append, block, held


@pytest.fixture
def make(tmp_path: Path) -> Callable[..., Replicator]:
    keys = crypto.key_pair(b"\x07" * 32)
    count = 0

    def make_rep(writer: bool = False, **config: object) -> Replicator:
        nonlocal count
        count += 1
        directory = tmp_path / f"peer{count}"
        if writer:
            feed = Feed.create(directory, keys)
        else:
            feed = Feed.open(directory, key=keys.public_key, create=True)
        config.setdefault("push", True)
        return Replicator(feed, ReplicatorConfig(seed=count, **config))  # type: ignore[arg-type]

    return make_rep


def _push_for(writer: Replicator, index: int, known: int) -> bytes:
    """The bytes of a push of block `index` built by the writer for a peer of length `known`."""
    feed = writer.feed
    req = wire.Request(id=wire.PUSH_REQUEST_ID, fork=feed.fork)
    req.block = wire.RequestBlock(index, 0)
    req.upgrade = wire.RequestUpgrade(known, feed.length - known)
    data = feed.proof(req)
    return wire.Framer().frame(wire.encode_message(data))[0]


def test_subscribe_messages_round_trip() -> None:
    for msg, raw in (
        (wire.Subscribe(True, 5), "0b0105"),
        (wire.Subscribe(False), "0b0000"),
        (wire.Subscribe(True, 300, answer=True), "0b03fd2c01"),
        (wire.Subscribe(False, answer=True), "0b0200"),
        (wire.Subscribe(False, depth=2), "0b0402"),
    ):
        assert wire.encode_message(msg).hex() == raw
        assert wire.decode_message(bytes.fromhex(raw)) == msg
    with pytest.raises(wire.WireError):
        wire.decode_message(bytes.fromhex("0b0500"))


def test_blocks_travel_down_a_push_chain(make: Callable[..., Replicator]) -> None:
    net = Net()
    w = net.add(make(writer=True))
    a = net.add(make())
    b = net.add(make())
    net.link(w, a)
    ab = net.link(a, b)
    append(net, w, [block(0)])
    net.run(2)  # depth notices spread; a subscribes to w, b to a
    assert a.relay.parent is not None and b.relay.parent is ab.b
    for i in range(1, 8):
        append(net, w, [block(i)])
        net.run(1)
    assert held(a) == list(range(1, 8)) or held(a) == list(range(8))
    assert set(range(1, 8)) <= set(held(b))
    assert b.relay.stats.pushes_received >= 6  # each new block came pushed, not pulled
    assert a.relay.stats.pushes_received >= 6
    assert [b.feed.get(i) for i in range(1, 8)] == [block(i) for i in range(1, 8)]  # type: ignore[attr-defined]
    for s in (ab.a, ab.b):
        assert net.of(s, PeerMisbehaved) == []
    assert b.stats(net.now).pushes_received >= 6 and a.stats(net.now).push_children == 1


def test_data_pushed_without_a_subscription_bans_the_pusher(
    make: Callable[..., Replicator],
) -> None:
    net = Net()
    w = net.add(make(writer=True))
    v = net.add(make(push=False))  # never subscribes
    link = net.link(w, v)
    append(net, w, [block(0)])
    net.run(2)
    assert v.feed.length == 1 and link.b.sub_state is None
    w.feed.append([block(1)])  # type: ignore[attr-defined]
    # An honest proof, but nobody asked for it: unrequested data.
    v.receive(link.b, _push_for(w, 1, 1), net.now)
    dropped = net.of(link.b, PeerMisbehaved) + [
        e for s, e in iter(v.next_event, None) if s is link.b and isinstance(e, PeerMisbehaved)
    ]
    assert len(dropped) == 1 and "without a subscription" in dropped[0].reason
    assert link.b.closed and not v.feed.has(1)


def test_a_tampered_push_bans_the_pusher(make: Callable[..., Replicator]) -> None:
    net = Net()
    w = net.add(make(writer=True))
    v = net.add(make())
    link = net.link(w, v)
    append(net, w, [block(0)])
    net.run(2)
    assert link.b.sub_state == "on", "the viewer subscribed to the writer"
    done: list[bool] = []

    def tamper(chunk: bytes) -> bytes | None:
        msg = wire.decode_message(chunk[1:])
        if isinstance(msg, wire.Data) and msg.request == wire.PUSH_REQUEST_ID and not done:
            assert msg.block is not None
            msg.block.value = b"X" + msg.block.value[1:]
            done.append(True)
            return wire.Framer().frame(wire.encode_message(msg))[0]
        return chunk

    link.tamper_ab = tamper
    append(net, w, [block(1)])
    net.run(2)
    assert done, "no push went out"
    dropped = net.of(link.b, PeerMisbehaved)
    assert len(dropped) == 1 and "bad proof" in dropped[0].reason
    assert not v.feed.has(1) or v.feed.get(1) == block(1)  # type: ignore[attr-defined]


def test_a_pusher_never_sends_what_the_subscriber_announced(
    make: Callable[..., Replicator],
) -> None:
    """Duplicates stay bounded: a block the subscriber already announced is not pushed to it."""
    net = Net()
    w = net.add(make(writer=True))
    v = net.add(make())
    link = net.link(w, v)
    append(net, w, [block(0)])
    net.run(2)
    sess: Session = link.a  # the writer's session with v
    assert sess.push_on
    sess.remote_has.add(5, 6)
    assert not sess.push(5)
    assert sess.push(6) and not sess.push(6)


def test_pushed_blocks_are_verified_events(make: Callable[..., Replicator]) -> None:
    net = Net()
    w = net.add(make(writer=True))
    v = net.add(make())
    link = net.link(w, v)
    append(net, w, [block(0)])
    net.run(2)
    append(net, w, [block(1), block(2)])
    net.run(1)
    assert {e.index for e in net.of(link.b, BlockVerified)} >= {1, 2}
    assert link.b.stats.pushes_received >= 2 and link.a.stats.blocks_pushed >= 2
