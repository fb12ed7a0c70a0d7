"""Waiting requests (sans-IO): a new block nobody near holds yet is asked of an early neighbour,
which keeps the request and answers the moment the block verifies there."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from streamer.core import replication, wire
from streamer.core.replication import NO_DATA_BUSY, WAIT_BEHIND
from streamer.core.scheduler import Replicator
from tests.test_replication import Link, Net, append, block, held
from tests.test_replication import keys as keys  # noqa: F401 - fixtures used by `make`
from tests.test_replication import make as make  # noqa: F401


def _message(chunk: bytes) -> wire.Message:
    return wire.decode_message(chunk[1:])


class _Gate:
    """Holds back the block answers from a to b on a link until opened (then they go on)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.held: list[bytes] = []
        self._open = False
        link.tamper_ab = self

    @property
    def open(self) -> bool:
        return self._open

    @open.setter
    def open(self, value: bool) -> None:
        self._open = value
        if value:
            self.link.ab.extend(self.held)
            self.held.clear()

    def __call__(self, chunk: bytes) -> bytes | None:
        msg = _message(chunk)
        # Only a block is held back: an upgrade alone passes (the length spreads ahead of blocks).
        if self.open or not isinstance(msg, wire.Data) or msg.block is None:
            return chunk
        self.held.append(chunk)
        return None


class _Spy:
    """Records the messages on one direction of a link."""

    def __init__(self, link: Link, *, ba: bool = False) -> None:
        self.seen: list[wire.Message] = []
        if ba:
            link.tamper_ba = self
        else:
            link.tamper_ab = self

    def __call__(self, chunk: bytes) -> bytes:
        self.seen.append(_message(chunk))
        return chunk

    def of(self, kind: type) -> list:
        return [m for m in self.seen if isinstance(m, kind)]


def _chain(make: Callable[..., Replicator]) -> tuple[Net, Replicator, Replicator, Replicator]:  # noqa: F811
    net = Net()
    w = net.add(make(writer=True))
    a = net.add(make())
    c = net.add(make())
    return net, w, a, c


def test_a_block_the_peer_lacks_waits_there_and_comes_when_it_verifies(
    make: Callable[..., Replicator],  # noqa: F811
) -> None:
    net, w, a, c = _chain(make)
    gate = _Gate(net.link(w, a))
    ac = net.link(a, c)
    append(net, w, [block(0)])
    gate.open = True
    net.run(1)
    assert held(c) == [0]
    gate.open = False
    asked, answered = _Spy(ac, ba=True), _Spy(ac)
    append(net, w, [block(1)])
    net.run(0.5)
    # a knows the length (the upgrade passed) but not the block: c asks a to wait for it.
    assert a.feed.length == c.feed.length == 2 and held(a) == held(c) == [0]
    waits = [r for r in asked.of(wire.Request) if r.block is not None and r.block.index == 1]
    assert len(waits) == 1 and waits[0].wait
    assert answered.of(wire.NoData) == []  # kept, not refused as missing
    gate.open = True
    net.run(0.5)
    assert held(a) == [0, 1] and held(c) == [0, 1]
    # The answer to the waiting request: no second request from c.
    assert len([r for r in asked.of(wire.Request) if r.block and r.block.index == 1]) == 1
    assert c.totals.blocks_from_peers == 2 and c.totals.duplicates == 0


def _fan(
    make: Callable[..., Replicator],  # noqa: F811
    relays: int,
    wait_peers: int = 1,
) -> tuple[Net, Replicator, list[Replicator], list[_Gate], list[_Spy]]:
    """w -> each relay (gated) -> c; block 0 everywhere, block 1 appended with all gates shut.
    Returns the relays, their gates and spies on what c asks each of them."""
    net = Net()
    w = net.add(make(writer=True, writer_copies=relays))  # a copy of each block for each relay
    mids = [net.add(make()) for _ in range(relays)]
    c = net.add(make(wait_peers=wait_peers))
    gates = [_Gate(net.link(w, m)) for m in mids]
    spies = [_Spy(net.link(m, c), ba=True) for m in mids]
    for g in gates:
        g.open = True
    append(net, w, [block(0)])
    net.run(1)
    for g in gates:
        g.open = False
    for spy in spies:
        spy.seen.clear()  # what block 0 took (maybe a duplicate: it waited at two) is not tested
    c.totals.duplicates = 0
    append(net, w, [block(1)])
    net.run(0.5)
    assert held(c) == [0] and c.feed.length == 2
    return net, c, mids, gates, spies


def _waits(spy: _Spy) -> list[wire.Request]:
    return [r for r in spy.of(wire.Request) if r.block and r.block.index == 1 and r.wait]


def test_the_wait_moves_to_a_neighbour_that_announces_the_block_first(
    make: Callable[..., Replicator],  # noqa: F811
) -> None:
    net, c, mids, gates, spies = _fan(make, 2)
    waited = [i for i, spy in enumerate(spies) if _waits(spy)]
    assert len(waited) == 1  # one neighbour is asked to wait, not both
    (other,) = set(range(2)) - set(waited)
    gates[other].open = True  # the other neighbour gets the block first and announces it
    net.run(0.5)
    assert held(mids[other]) == [0, 1] and held(c) == [0, 1]
    assert [x.request for x in spies[waited[0]].of(wire.Cancel)] == [_waits(spies[waited[0]])[0].id]
    gates[waited[0]].open = True
    net.run(1)
    assert held(mids[waited[0]]) == [0, 1]
    assert c.totals.duplicates == 0  # the cancelled wait is not answered


def test_with_two_wait_peers_both_waits_move_to_a_neighbour_that_announces_first(
    make: Callable[..., Replicator],  # noqa: F811
) -> None:
    net, c, mids, gates, spies = _fan(make, 3, wait_peers=2)
    waited = [i for i, spy in enumerate(spies) if _waits(spy)]
    assert len(waited) == 2 and all(len(_waits(spies[i])) == 1 for i in waited)  # two, not all
    (other,) = set(range(3)) - set(waited)
    gates[other].open = True  # the third neighbour gets the block first and announces it
    net.run(0.5)
    assert held(mids[other]) == [0, 1] and held(c) == [0, 1]
    for i in waited:
        assert [x.request for x in spies[i].of(wire.Cancel)] == [_waits(spies[i])[0].id]
    for g in gates:
        g.open = True
    net.run(1)
    assert all(held(m) == [0, 1] for m in mids)
    assert c.totals.duplicates == 0  # the cancelled waits are not answered


def test_with_two_wait_peers_one_announcing_the_block_cancels_the_other_wait(
    make: Callable[..., Replicator],  # noqa: F811
) -> None:
    net, c, mids, gates, spies = _fan(make, 2, wait_peers=2)
    assert [len(_waits(spy)) for spy in spies] == [1, 1]
    gates[0].open = True  # the first gets it: it answers our wait there
    net.run(0.5)
    assert held(c) == [0, 1]
    assert [x.request for x in spies[1].of(wire.Cancel)] == [_waits(spies[1])[0].id]
    assert spies[0].of(wire.Cancel) == []
    assert len([r for r in spies[0].of(wire.Request) if r.block and r.block.index == 1]) == 1
    gates[1].open = True
    net.run(1)
    assert held(mids[1]) == [0, 1] and c.totals.duplicates == 0


def test_a_wait_is_given_up_once_newer_blocks_verify_first(
    make: Callable[..., Replicator],  # noqa: F811
) -> None:
    net, w, a, c = _chain(make)
    wa = net.link(w, a)
    ac = net.link(a, c)
    append(net, w, [block(0)])
    net.run(1)

    def drop_block_1(chunk: bytes) -> bytes | None:
        msg = _message(chunk)
        if isinstance(msg, wire.Data) and msg.block is not None and msg.block.index == 1:
            return None
        return chunk

    wa.tamper_ab = drop_block_1
    answered = _Spy(ac)
    append(net, w, [block(1)])
    net.run(0.2)
    for i in range(2, 2 + WAIT_BEHIND):
        append(net, w, [block(i)])
        net.run(0.2)
    missing = [m for m in answered.of(wire.NoData) if m.reason != NO_DATA_BUSY]
    assert len(missing) == 1  # block 1 never came to a: c hears so and asks elsewhere
    assert 1 not in held(a)


def test_a_peer_that_keeps_no_waiting_requests_still_serves_the_block_once_it_has_it(
    make: Callable[..., Replicator],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A peer without the extension (the browser page) answers a waiting request missing at once.
    monkeypatch.setattr(replication, "MAX_WAITING", 0)
    net, w, a, c = _chain(make)
    gate = _Gate(net.link(w, a))
    ac = net.link(a, c)
    gate.open = True
    append(net, w, [block(0)])
    net.run(1)
    gate.open = False
    asked = _Spy(ac, ba=True)
    append(net, w, [block(1)])
    net.run(0.1)
    first = [r for r in asked.of(wire.Request) if r.block is not None]
    assert [(r.block.index, r.wait) for r in first] == [(1, True)]
    gate.open = True  # a gets block 1 and announces it: c asks again, at once, normally
    net.run(0.1)
    assert held(c) == [0, 1]
    again = [r for r in asked.of(wire.Request) if r.block is not None][1:]
    assert [(r.block.index, r.wait) for r in again] == [(1, False)]
