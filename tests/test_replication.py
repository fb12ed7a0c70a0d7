"""Live replication between in-memory peers on a virtual clock: sessions and the replicator.

A tiny driver (`Net`) pumps data-channel messages between sessions the way the asyncio adapter
does, optionally dropping one direction of a link, so every behaviour runs with real feeds, real
proofs and real signatures, and no sockets or sleeps.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core import crypto, wire
from streamer.core.feed import Feed
from streamer.core.handshake import Handshaker
from streamer.core.replication import (
    BlockVerified,
    Event,
    HandshakeComplete,
    PeerMisbehaved,
    RangeSet,
    Session,
    Upgraded,
)
from streamer.core.scheduler import PRIORITY_HIGH, Replicator, ReplicatorConfig

# ---------------------------------------------------------------- driver


@dataclass
class Link:
    a: Session
    b: Session
    ra: Replicator  # a's replicator
    rb: Replicator
    # Messages on a link go through this filter (None = deliver unchanged, b"" = drop).
    tamper_ab: Callable[[bytes], bytes | None] | None = None
    tamper_ba: Callable[[bytes], bytes | None] | None = None
    ab: deque[bytes] = field(default_factory=deque)  # chunks on their way from a to b
    ba: deque[bytes] = field(default_factory=deque)


@dataclass
class Net:
    """Peers wired together in memory; `run` advances a virtual clock through their timers."""

    now: float = 0.0
    reps: list[Replicator] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    events: dict[int, list[Event]] = field(default_factory=dict)  # id(session) -> events

    def add(self, rep: Replicator) -> Replicator:
        self.reps.append(rep)
        return rep

    def link(self, x: Replicator, y: Replicator, *, handshake: bool = False) -> Link:
        if handshake:
            hh = hashlib.blake2b(b"fingerprints", digest_size=64).digest()
            key = x.feed.key

            def side(rep: Replicator, initiator: bool) -> Session:
                sk = rep.feed._secret_key if rep.feed.writable else None  # noqa: SLF001
                return rep.add_session(handshake=Handshaker(key, hh, initiator, sk))

            a, b = side(x, True), side(y, False)
        else:
            a = x.add_session(name=f"{id(y)}", remote_is_writer=y.feed.writable)
            b = y.add_session(name=f"{id(x)}", remote_is_writer=x.feed.writable)
        link = Link(a, b, x, y)
        self.links.append(link)
        return link

    def _deliver(self) -> bool:
        """One round: every session sends what it has; then each direction delivers one chunk
        (as an adapter that sends after every message it receives)."""
        moved = False
        for link in self.links:
            for src, tamper, wire_ in (
                (link.a, link.tamper_ab, link.ab),
                (link.b, link.tamper_ba, link.ba),
            ):
                for chunk in src.datagrams_to_send(self.now):
                    if tamper is not None:
                        chunk = tamper(chunk)
                    if chunk:
                        wire_.append(chunk)
        for link in self.links:
            for dst, rep, wire_ in ((link.b, link.rb, link.ab), (link.a, link.ra, link.ba)):
                if wire_:
                    rep.receive(dst, wire_.popleft(), self.now)
                    moved = True
        for rep in self.reps:
            while (item := rep.next_event()) is not None:
                s, e = item
                self.events.setdefault(id(s), []).append(e)
        return moved or any(s.wants_to_send() for link in self.links for s in (link.a, link.b))

    def settle(self) -> None:
        for _ in range(100_000):
            if not self._deliver():
                return
        raise AssertionError("the network never went quiet")

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        self.settle()
        fired: list[float] = []
        while True:
            timers = [t for r in self.reps if (t := r.get_timer()) is not None]
            if not timers or min(timers) > end:
                break
            fired.append(min(timers))
            # A timer that fires and asks for the same instant again would spin forever.
            assert fired[-100:].count(fired[-1]) < 50, f"timer stuck at {fired[-1]}"
            self.now = max(self.now, min(timers))
            for r in self.reps:
                t = r.get_timer()
                if t is not None and t <= self.now:
                    r.handle_timer(self.now)
            self.settle()
        self.now = end

    def of(self, s: Session, kind: type) -> list:
        return [e for e in self.events.get(id(s), []) if isinstance(e, kind)]


# ---------------------------------------------------------------- fixtures


def block(i: int, size: int = 3000) -> bytes:
    return (f"segment {i} ".encode() * (size // 10 + 1))[:size]


@pytest.fixture
def keys() -> crypto.KeyPair:
    return crypto.key_pair(b"\x07" * 32)


@pytest.fixture
def make(tmp_path: Path, keys: crypto.KeyPair) -> Callable[..., Replicator]:
    count = 0

    def make_rep(writer: bool = False, **config: object) -> Replicator:
        nonlocal count
        count += 1
        directory = tmp_path / f"peer{count}"
        if writer:
            feed = Feed.create(directory, keys)
        else:
            feed = Feed.open(directory, key=keys.public_key, create=True)
        return Replicator(feed, ReplicatorConfig(seed=count, **config))  # type: ignore[arg-type]

    return make_rep


def append(net: Net, writer: Replicator, blocks: list[bytes]) -> None:
    writer.feed.append(blocks)  # type: ignore[attr-defined]
    writer.feed_changed(net.now)


def held(rep: Replicator) -> list[int]:
    return [i for i in range(rep.feed.length) if rep.feed.has(i)]


# ---------------------------------------------------------------- behaviour


def test_two_peers_replicate_a_live_stream(make: Callable[..., Replicator]) -> None:
    net = Net()
    w = net.add(make(writer=True))
    v = net.add(make(archive=True))
    link = net.link(w, v, handshake=True)
    append(net, w, [block(0), block(1)])
    net.run(1)
    assert net.of(link.b, HandshakeComplete) == [HandshakeComplete(remote_is_writer=True)]
    assert net.of(link.a, HandshakeComplete) == [HandshakeComplete(remote_is_writer=False)]
    for i in range(2, 12):
        append(net, w, [block(i)])
        net.run(1)
        assert v.feed.length == i + 1
        assert v.feed.has(i)
    assert held(v) == list(range(12))
    assert [v.feed.get(i) for i in range(12)] == [block(i) for i in range(12)]  # type: ignore[attr-defined]
    assert [e.length for e in net.of(link.b, Upgraded)][-1] == 12
    assert sorted(e.index for e in net.of(link.b, BlockVerified)) == list(range(12))
    stats = v.stats(net.now)
    assert stats.share_from_peers == 0.0 and stats.duplicates == 0
    assert stats.blocks_from_writer == 12 and stats.peers == 1 and stats.writer_connected
    assert net.of(link.a, PeerMisbehaved) == [] and net.of(link.b, PeerMisbehaved) == []


def test_a_viewer_reshares_so_the_next_downloads_mostly_from_it(
    make: Callable[..., Replicator],
) -> None:
    net = Net()
    w = net.add(make(writer=True))
    b = net.add(make(archive=True))
    net.link(w, b)
    append(net, w, [block(i) for i in range(10)])
    net.run(2)
    assert held(b) == list(range(10))
    c = net.add(make(archive=True))
    net.link(w, c)
    net.link(b, c)
    net.run(2)
    assert held(c) == list(range(10))
    # The writer already served each block once (to b): beyond that it spends only a small
    # budget of extra copies, so c gets nearly everything from b.
    stats = c.stats(net.now)
    assert stats.blocks_from_peers >= 7 and stats.blocks_from_writer <= 3
    # Live blocks: the writer serves each one once; whichever viewer got it passes it on.
    for i in range(10, 20):
        append(net, w, [block(i)])
        net.run(1)
    assert held(b) == held(c) == list(range(20))
    assert w.stats(net.now).blocks_up <= 20 + 4  # once each, plus the writer's small extra budget
    assert b.stats(net.now).blocks_up + c.stats(net.now).blocks_up >= 20


def test_the_writer_uploads_each_block_about_once_however_many_watch(
    make: Callable[..., Replicator],
) -> None:
    net = Net()
    w = net.add(make(writer=True))
    viewers = [net.add(make()) for _ in range(6)]
    for i, v in enumerate(viewers):
        net.link(w, v)
        for u in viewers[:i]:
            net.link(u, v)
    for i in range(30):
        append(net, w, [block(i)])
        net.run(1)
    for v in viewers:
        assert all(v.feed.has(i) for i in range(28, 30))
    assert w.stats(net.now).blocks_up <= 1.3 * 30
    assert sum(v.totals.blocks_from_peers for v in viewers) > 4 * sum(
        v.totals.blocks_from_writer for v in viewers
    )


def test_a_viewer_that_reaches_only_the_writer_gets_every_block_from_it(
    make: Callable[..., Replicator],
) -> None:
    """The NAT lab's stranded viewer: a and b reach the writer and each other, c (behind a
    symmetric NAT) only the writer. The writer's upload limit (each block once, then a small
    budget) assumes the viewers pass blocks on; c has nobody to get them from, so once it says it
    has no other neighbour the writer serves it everything. Without the count it starves."""

    def run(counts: dict[int, int]) -> tuple[Replicator, Replicator]:
        net = Net()
        w = net.add(make(writer=True))
        a, b = net.add(make()), net.add(make())
        net.link(w, a)
        net.link(w, b)
        net.link(a, b)
        for i in range(5):
            append(net, w, [block(i, 18000)])
            net.run(1)
        c = net.add(make())
        link = net.link(w, c)
        names = {id(link.a): counts.get(0)}  # the writer's session with c
        w.uploads.neighbours_of = lambda s: names.get(id(s))
        c.want(0, 1, PRIORITY_HIGH, now=net.now)  # the stream header, as a viewer asks first
        for i in range(5, 25):
            append(net, w, [block(i, 18000)])
            net.run(1)
        return w, c

    _, starved = run({})
    assert len(held(starved)) < 10  # the writer's small budget of extra copies
    w, c = run({0: 1})  # c told the writer it has one neighbour: the writer
    assert c.feed.has(0) and all(c.feed.has(i) for i in range(6, 25))
    assert w.stats(c.feed.length).blocks_up <= 2 * 25 + 5  # a and b still share the rest


def test_a_late_request_is_sent_again_to_another_peer(make: Callable[..., Replicator]) -> None:
    net = Net()
    w = net.add(make(writer=True))
    slow = net.add(make(archive=True))
    other = net.add(make(archive=True))
    net.link(w, slow)
    net.link(w, other)
    net.link(slow, other)
    append(net, w, [block(i) for i in range(6)])
    net.run(3)
    assert held(slow) == held(other) == list(range(6))
    c = net.add(make(archive=True, late_after=1.0))
    stalled = net.link(slow, c)

    def drop_data(chunk: bytes) -> bytes | None:
        msg = wire.decode_message(chunk[1:])
        return None if isinstance(msg, wire.Data) and msg.block is not None else chunk

    stalled.tamper_ab = drop_data
    net.run(0.1)  # c asks `slow`, its only peer, for everything; nothing comes back
    assert len(stalled.b.inflight) == 6
    net.link(other, c)
    net.run(1.5)
    assert held(c) == list(range(6))
    assert c.totals.rerequests >= 6
    assert c.totals.blocks_from_peers == 6 and stalled.b.stats.blocks_down == 0


def test_a_late_joiner_catches_up_from_viewers_after_the_broadcaster_left(
    make: Callable[..., Replicator],
) -> None:
    net = Net()
    w = net.add(make(writer=True))
    b = net.add(make(archive=True))
    link = net.link(w, b)
    append(net, w, [block(i) for i in range(12)])
    net.run(2)
    w.remove_session(link.a)
    b.remove_session(link.b)
    net.links.remove(link)
    net.reps.remove(w)
    c = net.add(make(archive=True))
    net.link(b, c)
    net.run(2)
    assert c.feed.length == 12
    assert held(c) == list(range(12))
    assert [c.feed.get(i) for i in range(12)] == [block(i) for i in range(12)]  # type: ignore[attr-defined]


def test_a_sparse_window_is_downloaded_alone(make: Callable[..., Replicator]) -> None:
    net = Net()
    w = net.add(make(writer=True))
    v = net.add(make(live=False))
    net.link(w, v)
    append(net, w, [block(i) for i in range(40)])
    v.want(10, 15, PRIORITY_HIGH)
    net.run(2)
    assert v.feed.length == 40
    assert v.feed.present_ranges() == [(10, 15)]  # type: ignore[attr-defined]
    v.set_playhead(30, net.now)
    net.run(2)
    assert v.feed.present_ranges() == [(10, 15), (30, 38)]  # type: ignore[attr-defined]


def test_requests_in_flight_to_one_peer_are_bounded(make: Callable[..., Replicator]) -> None:
    net = Net()
    w = net.add(make(writer=True))
    v = net.add(make(archive=True, max_inflight_per_peer=16))
    link = net.link(w, v)
    append(net, w, [block(i, 200) for i in range(100)])
    net.run(0)
    link.tamper_ab = lambda chunk: None  # the writer goes silent: nothing is answered
    v.receive(link.b, wire.Framer().frame(wire.encode_message(wire.Range(0, 100)))[0], net.now)
    net.run(1)
    assert len(link.b.inflight) <= 16
    link.tamper_ab = None
    net.run(20)
    assert held(v) == list(range(100))
    assert len(link.b.inflight) == 0


# ---------------------------------------------------------------- misbehaving peers


def _mutate_first(kind: str) -> Callable[[wire.Data], bool]:
    """A tamper for the first Data of one kind; returns True once it changed something."""

    def value(d: wire.Data) -> bool:
        if d.block is None:
            return False
        d.block.value = d.block.value[:-1] + bytes([d.block.value[-1] ^ 1])
        return True

    def node_hash(d: wire.Data) -> bool:
        if d.block is None or not d.block.nodes:
            return False
        n = d.block.nodes[0]
        d.block.nodes[0] = wire.Node(n.index, n.size, bytes([n.hash[0] ^ 1]) + n.hash[1:])
        return True

    def node_size(d: wire.Data) -> bool:
        if d.block is None or not d.block.nodes:
            return False
        n = d.block.nodes[0]
        d.block.nodes[0] = wire.Node(n.index, n.size + 1, n.hash)
        return True

    def missing_node(d: wire.Data) -> bool:
        if d.block is None or not d.block.nodes:
            return False
        d.block.nodes.pop()
        return True

    def extra_node(d: wire.Data) -> bool:
        if d.block is None:
            return False
        d.block.nodes.append(wire.Node(999, 5, b"\x01" * 32))
        return True

    def signature(d: wire.Data) -> bool:
        if d.upgrade is None:
            return False
        sig = d.upgrade.signature
        d.upgrade.signature = bytes([sig[0] ^ 1]) + sig[1:]
        return True

    def fork(d: wire.Data) -> bool:
        d.fork += 1
        return True

    def upgrade_node(d: wire.Data) -> bool:
        if d.upgrade is None or not d.upgrade.nodes:
            return False
        n = d.upgrade.nodes[-1]
        d.upgrade.nodes[-1] = wire.Node(n.index, n.size, bytes(32))
        return True

    return {
        "value": value,
        "node_hash": node_hash,
        "node_size": node_size,
        "missing_node": missing_node,
        "extra_node": extra_node,
        "signature": signature,
        "fork": fork,
        "upgrade_node": upgrade_node,
    }[kind]


TAMPERS = [
    "value",
    "node_hash",
    "node_size",
    "missing_node",
    "extra_node",
    "signature",
    "fork",
    "upgrade_node",
]


def _assert_nothing_invalid(rep: Replicator) -> None:
    feed = rep.feed
    feed.verify_all()  # type: ignore[attr-defined]
    for i in held(rep):
        assert feed.get(i) == block(i)  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", TAMPERS)
def test_a_peer_sending_a_tampered_proof_is_dropped(
    make: Callable[..., Replicator], kind: str
) -> None:
    net = Net()
    w = net.add(make(writer=True))
    v = net.add(make(archive=True, push=False))  # answers to requests (pushes: test_relay.py)
    link = net.link(w, v)
    append(net, w, [block(i) for i in range(5)])
    net.run(2)  # v holds 0..4 honestly; the tree has nodes to check against
    mutate = _mutate_first(kind)
    done = []

    def tamper(chunk: bytes) -> bytes | None:
        msg = wire.decode_message(chunk[1:])
        if isinstance(msg, wire.Data) and not done and mutate(msg):
            done.append(True)
            return wire.Framer().frame(wire.encode_message(msg))[0]
        return chunk

    link.tamper_ab = tamper
    append(net, w, [block(i) for i in range(5, 9)])
    net.run(2)
    assert done, "the tamper never applied"
    dropped = net.of(link.b, PeerMisbehaved)
    assert len(dropped) == 1, dropped
    assert link.b.closed and link.b not in v.sessions
    _assert_nothing_invalid(v)


def test_an_unrequested_block_gets_the_peer_dropped(make: Callable[..., Replicator]) -> None:
    net = Net()
    w = net.add(make(writer=True))
    v = net.add(make(live=False))
    link = net.link(w, v)
    append(net, w, [block(i) for i in range(4)])
    net.run(1)
    data = w.feed.proof(wire.Request(id=77, fork=0, block=wire.RequestBlock(2, 0)))
    v.receive(link.b, wire.Framer().frame(wire.encode_message(data))[0], net.now)
    net.settle()
    (event,) = net.of(link.b, PeerMisbehaved)
    assert "never sent" in event.reason
    assert held(v) == []


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x07", b"\x00\xff\xff\xff\xff", b"\x00\x03\x01\x05", b"\x01" + b"\x00" * 70000],
)
def test_undecodable_bytes_get_the_peer_dropped(
    make: Callable[..., Replicator], garbage: bytes
) -> None:
    net = Net()
    w = net.add(make(writer=True))
    v = net.add(make())
    link = net.link(w, v)
    net.run(0)
    v.receive(link.b, garbage, net.now)
    net.settle()
    assert len(net.of(link.b, PeerMisbehaved)) == 1
    assert link.b.closed


def test_a_wrong_handshake_gets_the_peer_dropped(make: Callable[..., Replicator]) -> None:
    net = Net()
    w = net.add(make(writer=True))
    v = net.add(make())
    link = net.link(w, v, handshake=True)
    forged = wire.Handshake(capability=b"\x00" * 32)
    link.tamper_ab = lambda chunk: (
        wire.Framer().frame(wire.encode_message(forged))[0]
        if isinstance(wire.decode_message(chunk[1:]), wire.Handshake)
        else chunk
    )
    append(net, w, [block(0)])
    net.run(1)
    (event,) = net.of(link.b, PeerMisbehaved)
    assert "handshake" in event.reason
    assert v.feed.length == 0


def test_a_forged_writer_signature_in_the_handshake_is_refused(
    make: Callable[..., Replicator],
) -> None:
    net = Net()
    w = net.add(make(writer=True))
    v = net.add(make())
    link = net.link(w, v, handshake=True)

    def forge(chunk: bytes) -> bytes | None:
        msg = wire.decode_message(chunk[1:])
        if isinstance(msg, wire.Handshake):
            msg.writer_signature = b"\x01" * 64
            return wire.Framer().frame(wire.encode_message(msg))[0]
        return chunk

    link.tamper_ba = forge
    net.run(0)
    assert len(net.of(link.a, PeerMisbehaved)) == 1


def test_requests_to_a_peer_that_leaves_go_to_another_at_once(
    make: Callable[..., Replicator],
) -> None:
    net = Net()
    w = net.add(make(writer=True))
    b = net.add(make(archive=True))
    d = net.add(make(archive=True))
    net.link(w, b)
    net.link(w, d)
    net.link(b, d)
    append(net, w, [block(i) for i in range(8)])
    net.run(2)
    c = net.add(make(archive=True))
    gone = net.link(b, c)
    gone.tamper_ab = lambda chunk: (
        None if isinstance(wire.decode_message(chunk[1:]), wire.Data) else chunk
    )
    net.run(0.1)
    assert gone.b.inflight
    net.link(d, c)
    c.remove_session(gone.b)  # b's channel closed
    b.remove_session(gone.a)
    net.links.remove(gone)
    net.run(0.1)  # well before any request could count as late
    assert held(c) == list(range(8))
    assert c.totals.rerequests == 0 and c.totals.timeouts == 0


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 200), st.integers(0, 40)), max_size=60))
@settings(max_examples=300, deadline=None)
def test_a_remote_bitfield_matches_a_plain_set(ops: list[tuple[bool, int, int]]) -> None:
    ranges, model = RangeSet(limit=10_000), set()
    for add, start, length in ops:
        if add:
            ranges.add(start, start + length)
            model.update(range(start, start + length))
        else:
            ranges.remove(start, start + length)
            model.difference_update(range(start, start + length))
    assert {i for i in range(260) if i in ranges} == model
    runs = ranges.runs()
    assert all(a < b for a, b in runs) and all(
        runs[i][1] < runs[i + 1][0] for i in range(len(runs) - 1)
    )


def test_a_remote_bitfield_stays_bounded() -> None:
    ranges = RangeSet(limit=8)
    for i in range(0, 100, 2):
        ranges.add(i, i + 1)
    assert len(ranges) == 8


def test_blocks_come_in_order_playback_window_then_live_edge_then_history(
    make: Callable[..., Replicator],
) -> None:
    net = Net()
    w = net.add(make(writer=True))
    append(net, w, [block(i, 100) for i in range(40)])
    v = net.add(make(archive=True, max_inflight_per_peer=1, playback_window=4, live_window=2))
    v.set_playhead(20, net.now)
    link = net.link(w, v)
    net.run(5)
    order = [e.index for e in net.of(link.b, BlockVerified)]
    assert sorted(order) == list(range(40))
    assert order[:6] == [20, 21, 22, 23, 38, 39]
    assert order[6:] == [i for i in range(40) if not 20 <= i < 24 and i < 38]


def test_timers_always_make_progress_whatever_the_clock_reads(
    make: Callable[..., Replicator],
) -> None:
    net = Net(now=13.494976759338572)  # sent_at + timeout - sent_at != timeout in floats
    w = net.add(make(writer=True))
    v = net.add(make(live=False))
    link = net.link(w, v)
    append(net, w, [block(i) for i in range(3)])
    net.settle()
    link.tamper_ab = lambda chunk: None
    v.want(0, 3, now=net.now)
    net.run(30)
    assert v.totals.timeouts >= 1
