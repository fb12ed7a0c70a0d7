"""Wire messages: reference encodings, round trips, hostile input (truncated, trailing bytes,
random bytes) and data-channel framing."""

from __future__ import annotations

import random
import struct

import pytest

from streamer.core import wire
from streamer.core.errors import WireError
from streamer.core.wire import Node

H = bytes(range(32))
NODES = [Node(2, 1, H), Node(5, 70000, bytes(32)), Node(1 << 40, (1 << 64) - 1, b"\xff" * 32)]

SAMPLES: list[wire.Message] = [
    wire.Sync(0, 8, 5),
    wire.Sync(3, 1 << 33, 0, False, False, False, True, True),
    wire.Request(1, 0, block=wire.RequestBlock(2, 0), upgrade=wire.RequestUpgrade(0, 8)),
    wire.Request(
        7,
        2,
        hash=wire.RequestBlock(9, 3),
        seek=wire.RequestSeek(1000, 4),
        manifest=True,
        priority=5,
    ),
    wire.Request(0xFFFF, 0),
    wire.Request(4, 0, block=wire.RequestBlock(12, 2), wait=True),
    wire.Cancel(1),
    wire.Cancel(1 << 50),
    wire.Data(1, 0, block=wire.DataBlock(3, b"hello", NODES)),
    wire.Data(
        2,
        1,
        hash=wire.DataHash(9, NODES[:1]),
        upgrade=wire.DataUpgrade(0, 8, NODES, NODES[:2], bytes(64)),
    ),
    wire.Data(3, 0, seek=wire.DataSeek(123456, []), upgrade=wire.DataUpgrade(4, 4, [], [], b"")),
    wire.Data(4, 0, block=wire.DataBlock(0, bytes(70000), [])),
    wire.NoData(1),
    wire.NoData(2, reason=3),
    wire.Want(0, 1024),
    wire.Want(5, 1, any=True),
    wire.Unwant(7, 300),
    wire.Unwant(0, 0, any=True),
    wire.Bitfield(0, [0xFF]),
    wire.Bitfield(4096, [0, 0xFFFFFFFF, 12345]),
    wire.Bitfield(1, []),
    wire.Range(0, 8),
    wire.Range(9, 1, drop=True),
    wire.Range(1 << 20, 0),
    wire.Extension("swarmcast/hello", b"\x00\x01payload"),
    wire.Extension("", b""),
    wire.Handshake(H),
    wire.Handshake(H, seeks=False, writer_signature=bytes(range(64))),
    wire.Data(5, 0, manifest=b"\x01\x00\x00"),
]

# Messages whose last field runs to the end of the message (or is optional): a prefix or a longer
# byte string can itself be a valid message, so for these we require canonical re-encoding instead.
OPEN_ENDED = (wire.Extension, wire.Want, wire.Unwant)


def open_ended(m: wire.Message) -> bool:
    return isinstance(m, OPEN_ENDED) or (isinstance(m, wire.Data) and m.manifest is not None)


def test_reference_examples(vectors: dict) -> None:
    ex = vectors["wire_examples"]
    cases = {
        "sync": (wire.SYNC, wire.Sync(0, 8, 5, True, True, True, False, False)),
        "request_block_upgrade": (
            wire.REQUEST,
            wire.Request(1, 0, block=wire.RequestBlock(2, 0), upgrade=wire.RequestUpgrade(0, 8)),
        ),
        "want": (wire.WANT, wire.Want(0, 1024)),
        "range": (wire.RANGE, wire.Range(0, 8)),
        "bitfield": (wire.BITFIELD, wire.Bitfield(0, [0xFF])),
        "noData": (wire.NO_DATA, wire.NoData(1, 0)),
    }
    for name, (mtype, msg) in cases.items():
        raw = bytes.fromhex(ex[name])
        assert wire.encode_payload(msg) == raw, name
        assert wire.encode_message(msg) == bytes([mtype]) + raw, name
        got = wire.decode_payload(mtype, raw)
        assert wire.encode_payload(got) == raw, name
    assert wire.decode_payload(wire.NO_DATA, bytes.fromhex(ex["noData"])) == wire.NoData(1, None)
    rc = vectors["replication_capability"]
    hs = wire.Handshake(bytes.fromhex(rc["initiator"]), seeks=True)
    assert wire.encode_payload(hs).hex() == ex["handshake"]
    assert wire.decode_payload(wire.HANDSHAKE, bytes.fromhex(ex["handshake"])) == hs


def test_reference_data_messages(vectors: dict) -> None:
    for p in vectors["proofs"]:
        raw = bytes.fromhex(p["wire_data_message_hex"])
        msg = wire.decode_payload(wire.DATA, raw)
        assert isinstance(msg, wire.Data) and msg.request == 1
        assert wire.encode_payload(msg) == raw
        assert wire.decode_message(bytes([wire.DATA]) + raw) == msg


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: wire.Message) -> None:
    raw = wire.encode_message(msg)
    assert wire.decode_message(raw) == msg
    assert wire.decode_message(bytearray(raw)) == msg
    assert wire.decode_message(memoryview(raw)) == msg


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_truncated_at_every_byte(msg: wire.Message) -> None:
    raw = wire.encode_message(msg)
    for cut in range(len(raw)):
        prefix = raw[:cut]
        if not open_ended(msg):
            with pytest.raises(WireError):
                wire.decode_message(prefix)
            continue
        try:
            got = wire.decode_message(prefix)
        except WireError:
            continue
        assert wire.encode_message(got) == prefix  # only another canonical message may decode


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_trailing_garbage(msg: wire.Message) -> None:
    raw = wire.encode_message(msg)
    for junk in (b"\x00\x00", b"\x07\x07\x07", b"\xff"):
        if open_ended(msg) and not isinstance(msg, (wire.Want, wire.Unwant)):
            got = wire.decode_message(raw + junk)  # the last field absorbs it by design
            assert wire.encode_message(got) == raw + junk
            continue
        with pytest.raises(WireError):
            wire.decode_message(raw + junk)


def test_hostile_counts_and_lengths_are_bounded() -> None:
    def uint(n: int) -> bytes:
        return b"\xff" + struct.pack("<Q", n)

    cases = [
        bytes([wire.BITFIELD, 0]) + uint(1 << 62),  # 2^62 words announced, none sent
        bytes([wire.DATA, 1, 0, 0, 0]) + uint(1 << 40),  # block value length
        bytes([wire.DATA, 1, 0, 0, 0, 0]) + uint(1 << 60),  # node count
        bytes([wire.DATA, 8, 0, 0, 0, 0]) + uint(1 << 59),  # upgrade node count
        bytes([wire.EXTENSION]) + uint(1 << 30) + b"x",  # name length
        bytes([wire.EXTENSION, 0xFD, 0x00, 0x04]) + b"n" * 1024,  # name too long to be real
        bytes([wire.EXTENSION, 2, 0xC3, 0x28]),  # name not UTF-8
        bytes([wire.HANDSHAKE, 3]) + H + bytes(63),  # writer signature cut short
        bytes([wire.DATA, 16, 0, 0]),  # manifest flag without a manifest
        bytes([11, 0]),  # unknown type
        uint(1 << 63),  # unknown huge type
        b"",
    ]
    for raw in cases:
        with pytest.raises(WireError):
            wire.decode_message(raw)
    with pytest.raises(WireError):
        wire.decode_message("not bytes")  # type: ignore[arg-type]


def test_encoder_rejects_unencodable_values() -> None:
    with pytest.raises(ValueError):
        wire.encode_message(wire.Cancel(-1))
    with pytest.raises(ValueError):
        wire.encode_message(wire.Cancel(1 << 64))
    with pytest.raises(ValueError):
        wire.encode_message(wire.Handshake(b"short"))
    with pytest.raises(TypeError):
        wire.encode_message(object())  # type: ignore[arg-type]


def test_random_bytes_only_raise_wire_error() -> None:
    rnd = random.Random(1234)
    encoded = [wire.encode_message(m) for m in SAMPLES if len(wire.encode_message(m)) < 2000]
    decoded = 0
    for i in range(6000):
        if i % 2:
            raw = rnd.randbytes(rnd.randrange(0, 80))
            if raw:  # aim random bodies at real message types too
                raw = bytes([rnd.randrange(12)]) + raw[1:]
        else:
            raw = bytearray(rnd.choice(encoded))
            for _ in range(rnd.randrange(1, 4)):
                raw[rnd.randrange(len(raw))] = rnd.randrange(256)
            raw = bytes(raw)
        try:
            msg = wire.decode_message(raw)
        except WireError:
            continue
        decoded += 1
        # whatever decodes must re-encode to something that decodes to the same message
        assert wire.decode_message(wire.encode_message(msg)) == msg
    assert decoded > 100


# ------------------------------------------------------------------ framing


@pytest.mark.parametrize("chunk_size", [2, 3, 7, 1000, wire.MAX_CHUNK])
def test_framing_round_trip(chunk_size: int) -> None:
    rnd = random.Random(chunk_size)
    framer = wire.Framer(chunk_size)
    re = wire.Reassembler(chunk_size)
    sizes = [0, 1, chunk_size - 2, chunk_size - 1, chunk_size, 3 * (chunk_size - 1), 5000]
    if chunk_size == wire.MAX_CHUNK:
        sizes.append(300_000)
    for size in sizes:
        msg = rnd.randbytes(size)
        chunks = framer.frame(msg)
        assert all(1 <= len(c) <= chunk_size for c in chunks)
        assert len(chunks) == max(1, -(-size // (chunk_size - 1)))
        out: list[bytes] = []
        for c in chunks:
            out += re.feed(c)
        assert out == [msg]


def test_framing_whole_messages_and_data_messages() -> None:
    framer, re = wire.Framer(), wire.Reassembler()
    msgs = [
        wire.Data(i, 0, block=wire.DataBlock(i, bytes([i]) * 65536 * (i % 3), NODES))
        for i in range(6)
    ]
    got = []
    for m in msgs:
        for c in framer.frame(wire.encode_message(m)):
            assert len(c) <= 64 * 1024
            got += [wire.decode_message(x) for x in re.feed(c)]
    assert got == msgs


def test_reassembler_rejects_bad_chunks() -> None:
    re = wire.Reassembler(chunk_size=16, max_message=40)
    for bad in (b"", b"\x02abc", bytes([0]) + bytes(16)):
        with pytest.raises(WireError):
            re.feed(bad)
    with pytest.raises(WireError):
        for _ in range(4):
            re.feed(b"\x01" + bytes(15))
    assert re.feed(b"\x00ok") == [b"ok"]  # recovers after an oversized message
    with pytest.raises(ValueError):
        wire.Framer(max_message=10).frame(bytes(11))
    with pytest.raises(ValueError):
        wire.Framer(chunk_size=1)
