"""Hostile input into replication sessions: over 10,000 seeded cases of random bytes, mutated
messages and tampered proofs (each tampering class), on real feeds.

Whatever arrives, no exception escapes `Session.receive`, bytes that do not decode and proofs that
do not verify get the peer dropped (PeerMisbehaved), and the feed stores nothing invalid.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

from streamer.core import crypto, wire
from streamer.core.errors import WireError
from streamer.core.feed import Feed
from streamer.core.replication import PeerMisbehaved, Session
from streamer.core.scheduler import Replicator, ReplicatorConfig

SEED = int(os.environ.get("FUZZ_SEED", "20261129"))
FRAMER = wire.Framer()
WRITER_LENGTH = 64
READER_LENGTH = 40


def value_of(i: int) -> bytes:
    return bytes([i % 251]) * (50 + 37 * i % 900)


@pytest.fixture(scope="module")
def feeds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Feed, Feed]:
    """A writer with 64 blocks and a reader that verified length 40 and blocks 0..9."""
    root = tmp_path_factory.mktemp("fuzz")
    keys = crypto.key_pair(b"\x42" * 32)
    writer = Feed.create(root / "w", keys)
    writer.append([value_of(i) for i in range(READER_LENGTH)])
    reader = Feed.open(root / "r", key=keys.public_key, create=True)
    up = writer.proof(wire.Request(id=1, fork=0, upgrade=wire.RequestUpgrade(0, READER_LENGTH)))
    reader.verify_and_apply(up)
    for i in range(10):
        reader.verify_and_apply(
            writer.proof(
                wire.Request(id=1, fork=0, block=wire.RequestBlock(i, reader.missing_nodes(i)))
            )
        )
    writer.append([value_of(i) for i in range(READER_LENGTH, WRITER_LENGTH)])
    return writer, reader


def frame(message: bytes) -> list[bytes]:
    return FRAMER.frame(message)


class Harness:
    """A fresh session per case (the previous one may have been dropped)."""

    def __init__(self, writer: Feed, reader: Feed) -> None:
        self.writer = writer
        self.reader = reader
        self.rep = Replicator(reader, ReplicatorConfig(live=False, seed=1))
        self.writer_rep = Replicator(writer, ReplicatorConfig(seed=2))
        self.now = 0.0
        self.cases = 0
        self.dropped = 0
        self.reps: dict[Session, Replicator] = {}

    def session(self, rep: Replicator | None = None) -> Session:
        s = (rep or self.rep).add_session(name="fuzz")
        self.reps[s] = rep or self.rep
        return s

    def feed(self, s: Session, chunks: list[bytes]) -> list[PeerMisbehaved]:
        self.cases += 1
        self.now += 0.001
        rep = self.reps.pop(s)
        for chunk in chunks:
            rep.receive(s, chunk, self.now)  # must never raise
        s.datagrams_to_send(self.now)
        events = []
        while (item := rep.next_event()) is not None:
            if item[0] is s:
                events.append(item[1])
        bad = [e for e in events if isinstance(e, PeerMisbehaved)]
        for e in bad:
            assert "internal error" not in e.reason, e.reason
        if bad:
            self.dropped += 1
            assert s.closed
        rep.remove_session(s)
        return bad

    def valid_answer(self, s: Session, rng: random.Random) -> wire.Data:
        """Make s request something the reader lacks; return the writer's honest answer."""
        reader = self.reader
        missing = [i for i in range(reader.length) if not reader.has(i)]
        if reader.length < self.writer.length and (not missing or rng.random() < 0.5):
            block = rng.randrange(reader.length, self.writer.length)
            out = s.request(self.now, block=block, upgrade_to=self.writer.length)
        else:
            block = rng.choice(missing)
            out = s.request(self.now, block=block)
        s.datagrams_to_send(self.now)
        request = wire.Request(id=out.id, fork=0, block=wire.RequestBlock(block, 0))
        request.block.nodes = reader.missing_nodes(block)  # type: ignore[union-attr]
        if out.upgrade:
            request.upgrade = wire.RequestUpgrade(reader.length, self.writer.length - reader.length)
        return self.writer.proof(request)

    def check_reader(self) -> None:
        self.reader.verify_all()
        for start, end in self.reader.present_ranges():
            for i in range(start, end):
                assert self.reader.get(i) == value_of(i)


# ---------------------------------------------------------------- tampering classes


def _nodes_of(d: wire.Data) -> list[list[wire.Node]]:
    out = []
    if d.block is not None:
        out.append(d.block.nodes)
    if d.upgrade is not None:
        out += [d.upgrade.nodes, d.upgrade.additional_nodes]
    return [n for n in out if n]


def _flip(b: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(b))
    return b[:i] + bytes([b[i] ^ (1 << rng.randrange(8))]) + b[i + 1 :]


def t_value(d: wire.Data, rng: random.Random) -> bool:
    if d.block is None:
        return False
    choice = rng.randrange(3)
    v = d.block.value
    d.block.value = _flip(v, rng) if choice == 0 else v[:-1] if choice == 1 else v + b"\x00"
    return True


def _pick_node(d: wire.Data, rng: random.Random) -> tuple[list[wire.Node], int] | None:
    lists = _nodes_of(d)
    if not lists:
        return None
    nodes = rng.choice(lists)
    return nodes, rng.randrange(len(nodes))


def t_node_hash(d: wire.Data, rng: random.Random) -> bool:
    found = _pick_node(d, rng)
    if found is None:
        return False
    nodes, i = found
    n = nodes[i]
    nodes[i] = wire.Node(n.index, n.size, _flip(n.hash, rng))
    return True


def t_node_size(d: wire.Data, rng: random.Random) -> bool:
    found = _pick_node(d, rng)
    if found is None:
        return False
    nodes, i = found
    n = nodes[i]
    nodes[i] = wire.Node(n.index, max(0, n.size + rng.choice([-1, 1, 4096])), n.hash)
    return True


def t_node_index(d: wire.Data, rng: random.Random) -> bool:
    found = _pick_node(d, rng)
    if found is None:
        return False
    nodes, i = found
    n = nodes[i]
    nodes[i] = wire.Node(n.index + rng.choice([-2, 2, 1, 64]), n.size, n.hash)
    return True


def t_missing_node(d: wire.Data, rng: random.Random) -> bool:
    found = _pick_node(d, rng)
    if found is None:
        return False
    nodes, i = found
    del nodes[i]
    return True


def t_extra_node(d: wire.Data, rng: random.Random) -> bool:
    lists = _nodes_of(d) or ([d.block.nodes] if d.block is not None else [])
    if not lists:
        return False
    nodes = rng.choice(lists)
    fake = wire.Node(rng.randrange(1, 200), rng.randrange(1, 5000), rng.randbytes(32))
    nodes.insert(rng.randrange(len(nodes) + 1), fake)
    return True


def t_signature(d: wire.Data, rng: random.Random) -> bool:
    if d.upgrade is None:
        return False
    d.upgrade.signature = _flip(d.upgrade.signature, rng)
    return True


def t_fork(d: wire.Data, rng: random.Random) -> bool:
    d.fork += rng.randrange(1, 3)
    return True


def t_upgrade_range(d: wire.Data, rng: random.Random) -> bool:
    if d.upgrade is None:
        return False
    if rng.randrange(2):
        d.upgrade.length += rng.choice([-1, 1])
    else:
        d.upgrade.start += rng.choice([-1, 1])
    return True


def t_block_index(d: wire.Data, rng: random.Random) -> bool:
    if d.block is None:
        return False
    d.block.index += rng.choice([-1, 1])
    return True


TAMPERS: list[Callable[[wire.Data, random.Random], bool]] = [
    t_value,
    t_node_hash,
    t_node_size,
    t_node_index,
    t_missing_node,
    t_extra_node,
    t_signature,
    t_fork,
    t_upgrade_range,
    t_block_index,
]


# ---------------------------------------------------------------- byte-level mutation


def mutate(raw: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0 and raw:
        return _flip(raw, rng)
    if kind == 1 and raw:
        return raw[: rng.randrange(len(raw))]
    if kind == 2:
        return raw + rng.randbytes(rng.randrange(1, 40))
    if kind == 3 and raw:
        i = rng.randrange(len(raw))
        return raw[:i] + rng.randbytes(rng.randrange(1, 9)) + raw[i + 8 :]
    if kind == 4 and raw:
        i = rng.randrange(len(raw))
        return raw[:i] + bytes([rng.choice([0xFD, 0xFE, 0xFF])]) + raw[i + 1 :]
    return rng.randbytes(rng.randrange(0, 200))


def random_message(rng: random.Random) -> wire.Message:
    def num() -> int:
        return rng.choice([0, 1, 7, 39, 40, 63, 64, 65, 1 << 20, 1 << 47, 1 << 48, (1 << 64) - 1])

    kind = rng.randrange(9)
    if kind == 0:
        return wire.Sync(fork=num(), length=num(), remote_length=num())
    if kind == 1:
        return wire.Range(num(), num(), rng.random() < 0.3)
    if kind == 2:
        return wire.Bitfield(
            32 * rng.randrange(4), [rng.getrandbits(32) for _ in range(rng.randrange(40))]
        )
    if kind == 3:
        return wire.Cancel(num())
    if kind == 4:
        return wire.NoData(num(), rng.choice([None, 1, 2]))
    if kind == 5:
        return wire.Want(num(), num())
    if kind == 6:
        return wire.Handshake(rng.randbytes(32))
    if kind == 7:
        return wire.Extension("x", rng.randbytes(5))
    req = wire.Request(id=num(), fork=rng.choice([0, 0, 1]))
    if rng.random() < 0.7:
        req.block = wire.RequestBlock(num(), rng.randrange(0, 70))
    if rng.random() < 0.4:
        req.upgrade = wire.RequestUpgrade(num(), num())
    if rng.random() < 0.1:
        req.hash = wire.RequestBlock(num(), num())
    return req


# ---------------------------------------------------------------- the run


def test_hostile_input_never_escapes_and_never_stores_anything_invalid(
    feeds: tuple[Feed, Feed],
) -> None:
    writer, reader = feeds
    h = Harness(writer, reader)
    rng = random.Random(SEED)
    tamper_drops = {t.__name__: 0 for t in TAMPERS}

    # 1. Each tampering class on honest proofs: always dropped.
    for n in range(3000):
        tamper = TAMPERS[n % len(TAMPERS)]
        s = h.session()
        data = h.valid_answer(s, rng)
        if not tamper(data, rng):
            h.feed(s, [])
            continue
        bad = h.feed(s, frame(wire.encode_message(data)))
        assert bad, f"{tamper.__name__} was not detected"
        tamper_drops[tamper.__name__] += 1

    # 2. Honest proofs mutated byte by byte: dropped unless they still decode and verify.
    for _ in range(3000):
        s = h.session()
        data = h.valid_answer(s, rng)
        raw = mutate(wire.encode_message(data), rng)
        try:
            decoded = wire.decode_message(raw)
        except WireError:
            decoded = None
        bad = h.feed(s, frame(raw) if raw else [b"\x00"])
        if decoded is None:
            assert bad, "undecodable bytes were accepted"

    # 3. Random and mutated messages of every type, to the reader and to the writer.
    for n in range(3000):
        rep = h.rep if n % 2 else h.writer_rep
        s = h.session(rep)
        raw = wire.encode_message(random_message(rng))
        if rng.random() < 0.5:
            raw = mutate(raw, rng)
        try:
            wire.decode_message(raw)
            decodes = True
        except WireError:
            decodes = False
        bad = h.feed(s, frame(raw) if raw else [b"\x00"])
        if not decodes:
            assert bad

    # 4. Raw chunks: bad framing headers, empty chunks, oversized chunks, partial messages.
    for _ in range(1500):
        s = h.session()
        kind = rng.randrange(4)
        if kind == 0:
            chunks = [bytes([rng.randrange(2, 256)]) + rng.randbytes(rng.randrange(50))]
        elif kind == 1:
            chunks = [b""]
        elif kind == 2:
            chunks = [b"\x00" + rng.randbytes(wire.MAX_CHUNK)]
        else:
            chunks = [
                b"\x01" + rng.randbytes(rng.randrange(1, 100)) for _ in range(rng.randrange(1, 4))
            ]
        bad = h.feed(s, chunks)
        if kind != 3:
            assert bad

    assert h.cases >= 10_000
    assert all(count > 100 for count in tamper_drops.values()), tamper_drops
    h.check_reader()
    assert reader.length in (READER_LENGTH, WRITER_LENGTH)
    assert h.rep.sessions == [] and h.writer_rep.sessions == []
