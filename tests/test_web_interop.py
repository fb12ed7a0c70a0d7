"""The tab's protocol core (streamer/web/*.js, run in node) against the Python implementation, both
directions: wire messages, proofs, signatures, handshakes from real aiortc SDPs, the stream format,
and live replication between Python sessions and a JS peer (writer -> tab -> viewer)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from streamer.core import crypto, names, wire
from streamer.core.errors import BlockNotFoundError, ProofError, WireError
from streamer.core.feed import Feed
from streamer.core.flat_tree import full_roots
from streamer.core.handshake import Handshaker, check_handshake, make_handshake
from streamer.core.merkle import (
    CompatVerifier,
    DefaultManifestVerifier,
    MemoryNodeStore,
    MerkleTree,
)
from streamer.core.replication import (
    BlockVerified,
    HandshakeComplete,
    PeerMisbehaved,
    Session,
)
from streamer.core.scheduler import Replicator, ReplicatorConfig
from streamer.media.format import Segment, SegmentHeader, StreamHeader
from streamer.net.rtc import RtcPeer
from tests.fixtures_node import node_command

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "js" / "interop.mjs"
MAX_SAFE = (1 << 53) - 1


class JsPeer:
    """The node driver: one JSON command per line in, one JSON reply per line out."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [*node_command(), str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def __call__(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the JS driver died during {op}"
        reply = json.loads(line)
        assert reply["ok"], f"JS {op} failed: {reply['error']}\n{reply.get('stack', '')}"
        return reply

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def js() -> JsPeer:
    peer = JsPeer()
    yield peer
    peer.close()


# ---------------------------------------------------------------- messages as the JS driver writes them


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def as_js(value: Any, top: bool = True) -> Any:
    """A Python wire object in the JSON shape of the JS modules (bytes as {"$": hex})."""
    if isinstance(value, (bytes, bytearray)):
        return {"$": bytes(value).hex()}
    if isinstance(value, list):
        return [as_js(v, False) for v in value]
    if dataclasses.is_dataclass(value):
        out = {
            _camel(f.name): as_js(getattr(value, f.name), False) for f in dataclasses.fields(value)
        }
        if top:
            name = type(value).__name__
            out["type"] = name[0].lower() + name[1:]
        return out
    return value


def random_message(rnd: random.Random) -> wire.Message:
    def num() -> int:
        return rnd.choice(
            [
                rnd.randrange(3),
                rnd.randrange(300),
                rnd.randrange(70000),
                rnd.randrange(1 << 33),
                rnd.randrange(1 << 50),
            ]
        )

    def raw(n: int) -> bytes:
        return rnd.randbytes(n)

    def nodes() -> list[wire.Node]:
        return [wire.Node(num(), num(), raw(32)) for _ in range(rnd.randrange(4))]

    maybe = lambda make: make() if rnd.random() < 0.5 else None  # noqa: E731
    kind = rnd.randrange(11)
    if kind == 0:
        return wire.Sync(num(), num(), num(), *(rnd.random() < 0.5 for _ in range(5)))
    if kind == 1:
        return wire.Request(
            num(),
            num(),
            block=maybe(lambda: wire.RequestBlock(num(), num())),
            hash=maybe(lambda: wire.RequestBlock(num(), num())),
            seek=maybe(lambda: wire.RequestSeek(num(), num())),
            upgrade=maybe(lambda: wire.RequestUpgrade(num(), num())),
            manifest=rnd.random() < 0.3,
            priority=rnd.choice([0, 0, 3]),
            wait=rnd.random() < 0.3,
        )
    if kind == 2:
        return wire.Cancel(num())
    if kind == 3:
        return wire.Data(
            num(),
            num(),
            block=maybe(lambda: wire.DataBlock(num(), raw(rnd.choice([0, 50, 70000])), nodes())),
            hash=maybe(lambda: wire.DataHash(num(), nodes())),
            seek=maybe(lambda: wire.DataSeek(num(), nodes())),
            upgrade=maybe(lambda: wire.DataUpgrade(num(), num(), nodes(), nodes(), raw(64))),
            manifest=maybe(lambda: raw(1 + rnd.randrange(30))),
        )
    if kind == 4:
        return wire.NoData(num(), rnd.choice([None, 1, 7]))
    if kind in (5, 6):
        cls = wire.Want if kind == 5 else wire.Unwant
        return cls(num(), num(), rnd.random() < 0.5)
    if kind == 7:
        return wire.Bitfield(num(), [rnd.randrange(1 << 32) for _ in range(rnd.randrange(5))])
    if kind == 8:
        return wire.Range(num(), num(), rnd.random() < 0.5)
    if kind == 9:
        return wire.Extension(rnd.choice(["", "swarmcast/x", "héllo"]), raw(rnd.randrange(20)))
    return wire.Handshake(raw(32), rnd.random() < 0.5, maybe(lambda: raw(64)))


def test_python_messages_decode_in_js_to_the_same_fields_and_bytes(js: JsPeer) -> None:
    rnd = random.Random(11)
    messages = [random_message(rnd) for _ in range(400)]
    encoded = [wire.encode_message(m) for m in messages]
    results = js("decode", messages=[e.hex() for e in encoded])["results"]
    for msg, raw, got in zip(messages, encoded, results, strict=True):
        assert "error" not in got, (msg, got)
        assert got["again"] == raw.hex(), msg
        assert got["msg"] == as_js(msg), msg


def test_js_refuses_what_python_refuses_and_integers_beyond_2_53(js: JsPeer) -> None:
    rnd = random.Random(5)
    bad = []
    for _ in range(300):
        raw = bytearray(wire.encode_message(random_message(rnd)))
        raw[rnd.randrange(len(raw))] ^= 1 << rnd.randrange(8)
        bad.append(bytes(raw[: rnd.randrange(len(raw) + 1)]))
    big = wire.encode_message(wire.Cancel(1 << 53))
    results = js("decode", messages=[b.hex() for b in [*bad, big]])["results"]
    assert results[-1] == {"error": "WireError"}
    for raw, got in zip(bad, results, strict=False):
        try:
            msg = wire.decode_message(raw)
        except WireError:
            assert got == {"error": "WireError"}, raw.hex()
            continue
        if "error" in got:  # Python takes integers up to 2^64; the tab refuses those past 2^53
            assert _has_big_int(msg), (raw.hex(), msg)
        else:
            assert got["msg"] == as_js(msg) and got["again"] == wire.encode_message(msg).hex()


def _has_big_int(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value > MAX_SAFE
    if isinstance(value, list):
        return any(_has_big_int(v) for v in value)
    if dataclasses.is_dataclass(value):
        return any(_has_big_int(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def test_js_messages_decode_in_python_to_the_same_fields_and_bytes(js: JsPeer) -> None:
    for item in js("encode", seed=3, count=400)["messages"]:
        raw = bytes.fromhex(item["hex"])
        msg = wire.decode_message(raw)
        assert as_js(msg) == item["msg"]
        assert wire.encode_message(msg) == raw


# ---------------------------------------------------------------- proofs


def build(kind: str, kp: crypto.KeyPair, values: list[bytes]) -> tuple[MerkleTree, MemoryNodeStore]:
    verifier = (
        CompatVerifier(kp.public_key)
        if kind == "compat"
        else DefaultManifestVerifier(kp.public_key)
    )
    store = MemoryNodeStore()
    tree = MerkleTree(store, verifier)
    for i in range(0, len(values), 5):
        batch = tree.append(values[i : i + 5], kp.secret_key)
        store.put(batch.nodes)
        tree.commit(batch)
    return tree, store


def nodes_json(nodes: list[wire.Node]) -> list[dict[str, Any]]:
    return [as_js(n, False) for n in nodes]


def proof_cases(seed: int, count: int) -> list[dict[str, Any]]:
    """Proofs from Python writers to sparse Python readers, genuine and with one bit flipped,
    each with Python's own verdict."""
    rnd = random.Random(seed)
    kp = crypto.key_pair(bytes([seed]) * 32)
    cases = []
    for n in range(count):
        kind = "compat" if n % 3 else "default"
        length = rnd.randrange(1, 40)
        values = [rnd.randbytes(rnd.choice([0, 1, 100, 3000, 70000])) for _ in range(length)]
        tree, store = build(kind, kp, values)
        start = rnd.randrange(0, length + 1)
        reader_nodes = [store.get_node(i) for i in full_roots(2 * start)]
        reader = MerkleTree(MemoryNodeStore(reader_nodes), tree.verifier, length=start)  # type: ignore[arg-type]
        b = rnd.randrange(length)
        upgrade = wire.RequestUpgrade(start, length - start) if start < length else None
        req = wire.Request(
            1, 0, block=wire.RequestBlock(b, reader.missing_nodes(b)), upgrade=upgrade
        )
        data = tree.proof(req)
        assert data.block is not None
        data.block.value = values[b]
        raw = wire.encode_message(data)
        variants = [raw]
        for _ in range(3):
            bad = bytearray(raw)
            bad[rnd.randrange(1, len(bad))] ^= 1 << rnd.randrange(8)
            variants.append(bytes(bad))
        for v in variants:
            try:
                batch = reader.verify(wire.decode_message(v))
                verdict: dict[str, Any] = {
                    "ok": True,
                    "upgraded": batch.upgraded,
                    "nodes": batch.nodes,
                }
            except (ProofError, WireError):
                verdict = {"ok": False}
            cases.append(
                {
                    "kind": kind,
                    "public_key": kp.public_key.hex(),
                    "reader": {"length": start, "fork": 0, "nodes": nodes_json(reader_nodes)},  # type: ignore[arg-type]
                    "data": v.hex(),
                    "python": verdict,
                }
            )
    return cases


def test_python_proofs_verify_in_js_with_the_same_verdicts(js: JsPeer) -> None:
    cases = proof_cases(seed=7, count=60)
    results = js("verify", cases=[{k: v for k, v in c.items() if k != "python"} for c in cases])[
        "results"
    ]
    genuine = 0
    for case, got in zip(cases, results, strict=True):
        want = case["python"]
        assert got["ok"] == want["ok"], (case["data"], got)
        if want["ok"]:
            genuine += 1
            assert got["upgraded"] == want["upgraded"]
            assert got["nodes"] == nodes_json(want["nodes"])
    assert genuine >= 60  # every genuine proof, plus flips that only touched the request id


def test_js_proofs_are_byte_identical_to_python_and_verify_there(js: JsPeer) -> None:
    rnd = random.Random(9)
    kp = crypto.key_pair(b"\x09" * 32)
    for kind in ("compat", "default"):
        length = 37
        values = [rnd.randbytes(rnd.choice([1, 500, 70000])) for _ in range(length)]
        tree, store = build(kind, kp, values)
        requests = []
        for _ in range(80):
            b = rnd.randrange(length + 2)
            start = rnd.randrange(length + 1)
            up = (
                wire.RequestUpgrade(start, rnd.randrange(0, length - start + 2))
                if rnd.random() < 0.6
                else None
            )
            requests.append(
                wire.Request(1, 0, block=wire.RequestBlock(b, rnd.randrange(6)), upgrade=up)
            )
        got = js(
            "prove",
            kind=kind,
            public_key=kp.public_key.hex(),
            length=tree.length,
            signature=(tree.signature or b"").hex(),
            nodes=nodes_json(list(store.nodes.values())),
            blocks=[v.hex() for v in values],
            requests=[as_js(r) for r in requests],
        )["proofs"]
        served = 0
        for req, proof in zip(requests, got, strict=True):
            try:
                data = tree.proof(req)
            except BlockNotFoundError:
                assert proof == {"error": "BlockNotFoundError"}, req
                continue
            assert isinstance(proof, str), (req, proof)
            assert data.block is not None
            data.block.value = values[data.block.index]
            assert proof == wire.encode_message(data).hex(), req
            served += 1
            # and a reader at the request's start takes it
            if (
                req.upgrade is not None
                and req.upgrade.start == 0
                and req.block
                and req.block.nodes == 0
            ):
                reader = MerkleTree(MemoryNodeStore(), tree.verifier)
                reader.verify(wire.decode_message(bytes.fromhex(proof)))
        assert served >= 20


@pytest.mark.parametrize("backend", ["wasm", "js"])
def test_blake2b_matches_hashlib_for_every_length_key_and_digest_size(
    js: JsPeer, backend: str
) -> None:
    rnd = random.Random(2)
    for _ in range(60):
        data = rnd.randbytes(rnd.choice([0, 1, 127, 128, 129, 256, 1000, 70000, 200000]))
        outlen = rnd.randrange(1, 65)
        key = rnd.randbytes(rnd.randrange(0, 65))
        got = js("blake2b", data=data.hex(), outlen=outlen, key=key.hex(), backend=backend)
        assert got["backend"] == backend
        assert got["digest"] == hashlib.blake2b(data, digest_size=outlen, key=key).hexdigest()


# ---------------------------------------------------------------- format and handshake


def test_stream_format_written_by_python_parses_in_js(js: JsPeer) -> None:
    header = StreamHeader(
        title="tést",
        start_time=1700000000.5,
        mime='video/mp4; codecs="avc1.64001f,mp4a.40.2"',
        width=640,
        height=360,
        fps=30.0,
        segment_duration=1.0,
        sample_rate=48000,
        channels=2,
        init=b"ftypmoov" * 10,
        extra={"media_delay": 1024 / 48000},
        part_duration=0.2,
        parts_per_segment=5,
    )
    segments = [
        Segment(12.5, 0.2, 1700000012.25, b"moofmdat" * 3, 0),
        Segment(12.7, 0.2, 1700000012.45, b"y", 0, independent=False, back=1),
        Segment(13.5, 0.2, 1700000013.25, b"x", 1),
        Segment(14.5, 0.0, 1700000014.0, b"", 2),
    ]
    got = js(
        "format",
        header=header.encode().hex(),
        segments=[s.encode().hex() for s in segments] + ["00"],
    )
    h = got["header"]
    assert h["init"] == {"$": header.init.hex()}
    for field in (
        "title",
        "start_time",
        "mime",
        "width",
        "height",
        "fps",
        "segment_duration",
        "extra",
        "part_duration",
        "parts_per_segment",
        "version",
    ):
        assert h[field] == getattr(header, field), field
    for seg, js_seg in zip(segments, got["segments"], strict=False):
        fixed = SegmentHeader.decode(seg.encode())
        assert (js_seg["pts"], js_seg["duration"], js_seg["wallClock"], js_seg["flags"]) == (
            seg.pts,
            seg.duration,
            seg.wall_clock,
            fixed.flags,
        )
        assert js_seg["data"] == {"$": seg.data.hex()}
        assert (js_seg["discontinuity"], js_seg["end"]) == (seg.discontinuity, seg.end)
        assert (js_seg["independent"], js_seg["back"]) == (fixed.independent, fixed.back)
    assert got["segments"][-1] == {"error": "StreamFormatError"}


async def test_handshake_from_real_aiortc_sdps_matches_python(js: JsPeer) -> None:
    key = crypto.key_pair(b"\x03" * 32)
    a = RtcPeer("b", initiator=True)
    b = RtcPeer("a", initiator=False)
    try:
        offer = await a.offer()
        answer = await b.answer(offer)
        await a.accept(answer)
        for local, remote, peer, initiator in ((offer, answer, a, True), (answer, offer, b, False)):
            got = js(
                "fingerprint",
                local_sdp=local,
                remote_sdp=remote,
                key=key.public_key.hex(),
                initiator=initiator,
            )
            hh = peer.handshake_hash()
            assert got["handshake_hash"] == hh.hex()
            ours = make_handshake(key.public_key, hh, initiator)
            assert got["handshake"] == wire.encode_message(ours).hex()
        # The writer's handshake (signed capability) checks out in JS; a forged one does not.
        hh = a.handshake_hash()
        writer = make_handshake(key.public_key, hh, True, key.secret_key)
        args = {"key": key.public_key.hex(), "handshake_hash": hh.hex(), "initiator": False}
        ok = js("check_handshake", handshake=wire.encode_message(writer).hex(), **args)
        assert ok == {"ok": True, "valid": True, "writer": True}
        assert check_handshake(writer, key.public_key, hh, False) is True
        forged = dataclasses.replace(writer, writer_signature=bytes(64))
        bad = js("check_handshake", handshake=wire.encode_message(forged).hex(), **args)
        assert bad["valid"] is False and "bad signature" in bad["error"]
        wrong = js(
            "check_handshake",
            handshake=wire.encode_message(writer).hex(),
            **{**args, "initiator": True},
        )
        assert wrong["valid"] is False and "capability" in wrong["error"]
    finally:
        await a.close()
        await b.close()


def test_name_records_signed_in_python_verify_in_js(js: JsPeer) -> None:
    kp = crypto.key_pair(b"\x05" * 32)
    good = names.sign_record("my-first.stream_1", kp.secret_key, 1_700_000_000).to_json()
    other = names.sign_record("other", crypto.key_pair(b"\x06" * 32).secret_key, 5).to_json()
    records = [
        good,
        {**good, "time": good["time"] + 1},
        {**good, "name": "my-first-stream"},
        {**good, "key": other["key"]},
        {**good, "name": "Upper"},
        {**good, "signature": "00" * 63},
        {**good, "time": -1},
        [],
    ]
    results = js("names", records=records)["results"]
    assert results[0] == {
        "valid": True,
        "name": good["name"],
        "key": kp.public_key.hex(),
        "time": good["time"],
    }
    for record, got in zip(records[1:], results[1:], strict=True):
        assert got["valid"] is False and got["error"].startswith("ProofError"), record
        with pytest.raises(ProofError):
            names.parse_verified(record)
    assert "bad signature" in results[1]["error"]


# ---------------------------------------------------------------- live replication


def segment(i: int) -> bytes:
    size = 100_000 if i == 5 else 3000  # one block spans two data-channel chunks
    return (f"segment {i} ".encode() * (size // 10 + 1))[:size]


class Mixed:
    """Python sessions linked to named sessions of the JS peer, pumped on a virtual clock."""

    def __init__(self, js: JsPeer) -> None:
        self.js = js
        self.now = 0.0
        self.reps: list[Replicator] = []
        # JS session name -> (Python session, its replicator, tamper)
        self.links: dict[str, tuple[Session, Replicator, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}  # the JS side's, by session name
        self.py_events: dict[int, list[Any]] = {}  # id(Python session) -> its events
        self.js_timer: float | None = None
        self.state: dict[str, Any] = {}

    def link(
        self, name: str, rep: Replicator, *, js_initiator: bool, tamper: Any = None
    ) -> Session:
        hh = hashlib.blake2b(name.encode(), digest_size=32).digest()
        sk = rep.feed._secret_key if rep.feed.writable else None  # type: ignore[attr-defined]  # noqa: SLF001
        s = rep.add_session(handshake=Handshaker(rep.feed.key, hh, not js_initiator, sk))
        self.js("session", name=name, handshake_hash=hh.hex(), initiator=js_initiator)
        self.links[name] = (s, rep, tamper)
        return s

    def settle(self) -> None:
        for _ in range(10_000):
            inbox: dict[str, list[str]] = {}
            for name, (s, _, tamper) in self.links.items():
                chunks = s.datagrams_to_send(self.now)
                if tamper is not None:
                    chunks = [t for c in chunks if (t := tamper(c))]
                inbox[name] = [c.hex() for c in chunks]
            reply = self.js("step", now=self.now, inbox=inbox)
            moved = any(inbox.values())
            for name, chunks in reply["outbox"].items():
                s, rep, _ = self.links[name]
                for c in chunks:
                    rep.receive(s, bytes.fromhex(c), self.now)
                    moved = True
            for name, events in reply["events"].items():
                self.events.setdefault(name, []).extend(events)
            for rep in self.reps:
                while (item := rep.next_event()) is not None:
                    self.py_events.setdefault(id(item[0]), []).append(item[1])
            self.js_timer = reply["timer"]
            self.state = reply
            if not moved and not any(s.wants_to_send() for s, _, _ in self.links.values()):
                return
        raise AssertionError("the network never went quiet")

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        self.settle()
        for _ in range(10_000):
            timers = [t for r in self.reps if (t := r.get_timer()) is not None]
            if self.js_timer is not None:
                timers.append(self.js_timer)
            if not timers or min(timers) > end:
                break
            self.now = max(self.now, min(timers))
            for r in self.reps:
                t = r.get_timer()
                if t is not None and t <= self.now:
                    r.handle_timer(self.now)
            self.settle()
        self.now = end


def test_python_writer_to_js_tab_to_python_viewer(js: JsPeer, tmp_path: Path) -> None:
    kp = crypto.key_pair(b"\x07" * 32)
    writer = Replicator(Feed.create(tmp_path / "w", kp), ReplicatorConfig(seed=1))
    viewer = Replicator(
        Feed.open(tmp_path / "v", key=kp.public_key, create=True),
        ReplicatorConfig(seed=2, archive=True),
    )
    js("init", key=kp.public_key.hex(), config={"seed": 3})
    net = Mixed(js)
    net.reps = [writer, viewer]
    w_s = net.link("writer", writer, js_initiator=True)
    v_s = net.link("viewer", viewer, js_initiator=False)
    for i in range(12):
        writer.feed.append([segment(i)])  # type: ignore[attr-defined]
        writer.feed_changed(net.now)
        net.run(1)
    js("want", start=0, end=12)  # the tab also fetches what it missed before joining the edge
    net.run(5)

    tab = js("stats", now=net.now)
    # the tab reports the same stats JSON as a Python node (core/stats.py)
    py_stats = viewer.stats(net.now).as_json()
    assert list(tab["stats"]) == list(py_stats)
    assert list(tab["stats"]["neighbours"][0]) == list(py_stats["neighbours"][0])
    assert net.state["length"] == 12
    assert net.state["held"] == [[0, 12]]
    assert tab["blocks"] == {str(i): segment(i).hex() for i in range(12)}
    assert tab["stats"]["blocks_from_writer"] == 12 and tab["stats"]["peers_dropped"] == 0
    assert {"type": "handshake", "remoteIsWriter": True} in net.events["writer"]
    assert {"type": "handshake", "remoteIsWriter": False} in net.events["viewer"]
    # The Python viewer's only neighbour is the tab: every block it holds came through JS proofs.
    assert viewer.feed.length == 12
    assert [viewer.feed.get(i) for i in range(12)] == [segment(i) for i in range(12)]  # type: ignore[attr-defined]
    v_events = net.py_events[id(v_s)]
    assert HandshakeComplete(remote_is_writer=False) in v_events
    assert sorted(e.index for e in v_events if isinstance(e, BlockVerified)) == list(range(12))
    w_events = net.py_events.get(id(w_s), [])
    assert not [e for e in v_events + w_events if isinstance(e, PeerMisbehaved)]
    assert viewer.stats(net.now).blocks_from_peers == 12


def test_js_tab_drops_a_python_peer_that_sends_a_forged_block(js: JsPeer, tmp_path: Path) -> None:
    kp = crypto.key_pair(b"\x08" * 32)
    writer = Replicator(Feed.create(tmp_path / "w", kp), ReplicatorConfig(seed=1))
    js("init", key=kp.public_key.hex(), config={"seed": 3})
    net = Mixed(js)
    net.reps = [writer]

    def forge(chunk: bytes) -> bytes:
        try:
            msg = wire.decode_message(chunk[1:])
        except WireError:
            return chunk
        if isinstance(msg, wire.Data) and msg.block is not None:
            msg.block.value = b"forged" + msg.block.value[6:]
            return b"\x00" + wire.encode_message(msg)
        return chunk

    net.link("writer", writer, js_initiator=True, tamper=forge)
    writer.feed.append([segment(i) for i in range(4)])  # type: ignore[attr-defined]
    writer.feed_changed(net.now)
    net.run(2)
    dropped = [e for e in net.events["writer"] if e["type"] == "misbehaved"]
    assert len(dropped) == 1 and "bad proof" in dropped[0]["reason"]
    assert net.state["closed"]["writer"] is True
    assert net.state["held"] == []
    assert js("stats")["stats"]["peers_dropped"] == 1
