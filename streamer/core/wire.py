"""Replication messages (docs/wire.md) and their compact-encoding bytes, plus data-channel framing.

encode_message/decode_message turn one channel message (`uint type || payload`) into bytes and back;
Framer/Reassembler split and join messages for a data channel. Pure and sans-IO: decoding untrusted
bytes must raise WireError for anything malformed and must never allocate more than the input bounds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Union

from streamer.core.compat import SLOTS
from streamer.core.errors import WireError

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

MAX_UINT = (1 << 64) - 1
MAX_NAME = 256  # bytes of an extension name; longer names are hostile, not useful
NODE_MIN_BYTES = 34  # uint index (>=1) + uint size (>=1) + 32-byte hash: bounds array counts


@dataclass(frozen=True, **SLOTS)
class Node:
    """One Merkle tree node: flat-tree index, byte size of the covered blocks, BLAKE2b-256 hash."""

    index: int
    size: int
    hash: bytes


# ---------------------------------------------------------------- messages


@dataclass(**SLOTS)
class RequestBlock:
    index: int  # block number for `block`, tree index for `hash`
    nodes: int  # how many nodes on the upward path the requester lacks


@dataclass(**SLOTS)
class RequestSeek:
    bytes: int
    padding: int = 0


@dataclass(**SLOTS)
class RequestUpgrade:
    start: int
    length: int


@dataclass(**SLOTS)
class Request:
    id: int
    fork: int
    block: RequestBlock | None = None
    hash: RequestBlock | None = None
    seek: RequestSeek | None = None
    upgrade: RequestUpgrade | None = None
    manifest: bool = False
    priority: int = 0
    # Our extension (flag 64): a block the peer does not hold yet is not refused as missing but
    # kept, and answered the moment it verifies there (docs/replication.md, "Waiting requests").
    wait: bool = False


@dataclass(**SLOTS)
class DataBlock:
    index: int
    value: bytes
    nodes: list[Node]


@dataclass(**SLOTS)
class DataHash:
    index: int
    nodes: list[Node]


@dataclass(**SLOTS)
class DataSeek:
    bytes: int
    nodes: list[Node]


@dataclass(**SLOTS)
class DataUpgrade:
    start: int
    length: int
    nodes: list[Node]
    additional_nodes: list[Node]
    signature: bytes


@dataclass(**SLOTS)
class Data:
    request: int
    fork: int
    block: DataBlock | None = None
    hash: DataHash | None = None
    seek: DataSeek | None = None
    upgrade: DataUpgrade | None = None
    manifest: bytes | None = None  # an encoded manifest, sent raw as the last field


@dataclass(**SLOTS)
class Sync:
    fork: int
    length: int
    remote_length: int
    can_upgrade: bool = True
    uploading: bool = True
    downloading: bool = True
    has_manifest: bool = False
    allow_push: bool = False


@dataclass(**SLOTS)
class Cancel:
    request: int


@dataclass(**SLOTS)
class NoData:
    request: int
    reason: int | None = None


@dataclass(**SLOTS)
class Want:
    start: int
    length: int
    any: bool = False


@dataclass(**SLOTS)
class Unwant:
    start: int
    length: int
    any: bool = False


@dataclass(**SLOTS)
class Bitfield:
    start: int
    bitfield: list[int] = field(
        default_factory=list
    )  # u32 words, bit i of word w = block start+32w+i


@dataclass(**SLOTS)
class Range:
    start: int
    length: int
    drop: bool = False


@dataclass(**SLOTS)
class Extension:
    name: str
    message: bytes


@dataclass(**SLOTS)
class Subscribe:
    """Live push (our extension, type 11). From a subscriber: `on` asks the peer to push every block
    with index >= start the moment it verifies there (False: stop). From the pusher, `answer` set:
    `on` accepted, else refused or ended; no push follows an answer with `on` False. With `depth`
    set it is only a notice: the sender is `depth` relays from the broadcaster on the push tree."""

    on: bool
    start: int = 0
    answer: bool = False
    depth: int | None = None


@dataclass(**SLOTS)
class Handshake:
    capability: bytes  # 32 bytes, crypto.replication_capability
    seeks: bool = True
    writer_signature: bytes | None = None  # 64 bytes when present


# Union, not |: this runs at import, and the core also runs on PyPy 3.9 (compat.py).
Message = Union[  # noqa: UP007
    Sync,
    Request,
    Cancel,
    Data,
    NoData,
    Want,
    Unwant,
    Bitfield,
    Range,
    Extension,
    Handshake,
    Subscribe,
]

SYNC, REQUEST, CANCEL, DATA, NO_DATA, WANT, UNWANT, BITFIELD, RANGE, EXTENSION, HANDSHAKE = range(
    11
)
SUBSCRIBE = 11
PUSH_REQUEST_ID = 0  # a `data` with this request id is a push (requests count from 1)

# ---------------------------------------------------------------- encoder


def _uint(out: bytearray, n: int) -> None:
    if n <= 0xFC:
        if n < 0:
            raise ValueError(f"cannot encode negative integer {n}")
        out.append(n)
    elif n <= 0xFFFF:
        out.append(0xFD)
        out += _U16.pack(n)
    elif n <= 0xFFFFFFFF:
        out.append(0xFE)
        out += _U32.pack(n)
    elif n <= MAX_UINT:
        out.append(0xFF)
        out += _U64.pack(n)
    else:
        raise ValueError(f"integer {n} does not fit in 64 bits")


def _buffer(out: bytearray, b: bytes) -> None:
    _uint(out, len(b))
    out += b


def _fixed(out: bytearray, b: bytes, n: int) -> None:
    if len(b) != n:
        raise ValueError(f"expected {n} bytes, got {len(b)}")
    out += b


def _nodes(out: bytearray, nodes: list[Node]) -> None:
    _uint(out, len(nodes))
    for n in nodes:
        _uint(out, n.index)
        _uint(out, n.size)
        _fixed(out, n.hash, 32)


def _enc_sync(out: bytearray, m: Sync) -> None:
    flags = (
        (1 if m.can_upgrade else 0)
        | (2 if m.uploading else 0)
        | (4 if m.downloading else 0)
        | (8 if m.has_manifest else 0)
        | (16 if m.allow_push else 0)
    )
    _uint(out, flags)
    _uint(out, m.fork)
    _uint(out, m.length)
    _uint(out, m.remote_length)


def _enc_request(out: bytearray, m: Request) -> None:
    flags = (
        (1 if m.block else 0)
        | (2 if m.hash else 0)
        | (4 if m.seek else 0)
        | (8 if m.upgrade else 0)
        | (16 if m.manifest else 0)
        | (32 if m.priority else 0)
        | (64 if m.wait else 0)
    )
    _uint(out, flags)
    _uint(out, m.id)
    _uint(out, m.fork)
    if m.block:
        _uint(out, m.block.index)
        _uint(out, m.block.nodes)
    if m.hash:
        _uint(out, m.hash.index)
        _uint(out, m.hash.nodes)
    if m.seek:
        _uint(out, m.seek.bytes)
        _uint(out, m.seek.padding)
    if m.upgrade:
        _uint(out, m.upgrade.start)
        _uint(out, m.upgrade.length)
    if m.priority:
        _uint(out, m.priority)


def _enc_data(out: bytearray, m: Data) -> None:
    flags = (
        (1 if m.block else 0)
        | (2 if m.hash else 0)
        | (4 if m.seek else 0)
        | (8 if m.upgrade else 0)
        | (16 if m.manifest else 0)
    )
    _uint(out, flags)
    _uint(out, m.request)
    _uint(out, m.fork)
    if m.block:
        _uint(out, m.block.index)
        _buffer(out, m.block.value)
        _nodes(out, m.block.nodes)
    if m.hash:
        _uint(out, m.hash.index)
        _nodes(out, m.hash.nodes)
    if m.seek:
        _uint(out, m.seek.bytes)
        _nodes(out, m.seek.nodes)
    if m.upgrade:
        u = m.upgrade
        _uint(out, u.start)
        _uint(out, u.length)
        _nodes(out, u.nodes)
        _nodes(out, u.additional_nodes)
        _buffer(out, u.signature or b"")
    if m.manifest:
        out += m.manifest


def _enc_cancel(out: bytearray, m: Cancel) -> None:
    _uint(out, m.request)


def _enc_no_data(out: bytearray, m: NoData) -> None:
    _uint(out, m.request)
    if m.reason:
        _uint(out, 1)
        _uint(out, m.reason)
    else:
        _uint(out, 0)


def _enc_want(out: bytearray, m: Want | Unwant) -> None:
    _uint(out, m.start)
    _uint(out, m.length)
    if m.any:
        _uint(out, 1)


def _enc_bitfield(out: bytearray, m: Bitfield) -> None:
    _uint(out, m.start)
    _uint(out, len(m.bitfield))
    for w in m.bitfield:
        out += _U32.pack(w)


def _enc_range(out: bytearray, m: Range) -> None:
    one = m.length == 1
    _uint(out, (1 if m.drop else 0) | (2 if one else 0))
    _uint(out, m.start)
    if not one:
        _uint(out, m.length)


def _enc_extension(out: bytearray, m: Extension) -> None:
    name = m.name.encode()
    if len(name) > MAX_NAME:
        raise ValueError(f"extension name longer than {MAX_NAME} bytes")
    _buffer(out, name)
    out += m.message


def _enc_handshake(out: bytearray, m: Handshake) -> None:
    writer = m.writer_signature is not None
    _uint(out, (1 if m.seeks else 0) | (2 if writer else 0))
    _fixed(out, m.capability, 32)
    if m.writer_signature is not None:
        _fixed(out, m.writer_signature, 64)


def _enc_subscribe(out: bytearray, m: Subscribe) -> None:
    if m.depth is not None:
        _uint(out, 4)
        _uint(out, m.depth)
        return
    _uint(out, (1 if m.on else 0) | (2 if m.answer else 0))
    _uint(out, m.start)


_ENCODERS: dict[type, tuple[int, object]] = {
    Sync: (SYNC, _enc_sync),
    Request: (REQUEST, _enc_request),
    Cancel: (CANCEL, _enc_cancel),
    Data: (DATA, _enc_data),
    NoData: (NO_DATA, _enc_no_data),
    Want: (WANT, _enc_want),
    Unwant: (UNWANT, _enc_want),
    Bitfield: (BITFIELD, _enc_bitfield),
    Range: (RANGE, _enc_range),
    Extension: (EXTENSION, _enc_extension),
    Handshake: (HANDSHAKE, _enc_handshake),
    Subscribe: (SUBSCRIBE, _enc_subscribe),
}


def encode_payload(msg: Message) -> bytes:
    """The message body without the type prefix (what compact-encoding's wire.* encoders produce)."""
    _, enc = _ENCODERS[type(msg)]
    out = bytearray()
    enc(out, msg)  # type: ignore[operator]
    return bytes(out)


def encode_message(msg: Message) -> bytes:
    """`uint type || payload` for one message on our channel."""
    try:
        mtype, enc = _ENCODERS[type(msg)]
    except KeyError:
        raise TypeError(f"not a wire message: {type(msg).__name__}") from None
    out = bytearray()
    _uint(out, mtype)
    enc(out, msg)  # type: ignore[operator]
    return bytes(out)


# ---------------------------------------------------------------- decoder


class _Reader:
    """Cursor over untrusted bytes; every read checks bounds and raises WireError."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf)

    def uint(self) -> int:
        buf, pos = self.buf, self.pos
        if pos >= self.end:
            raise WireError("message truncated: expected an integer; the peer sent a bad message")
        a = buf[pos]
        if a <= 0xFC:
            self.pos = pos + 1
            return a
        width = 2 if a == 0xFD else 4 if a == 0xFE else 8
        if pos + 1 + width > self.end:
            raise WireError("message truncated inside an integer; the peer sent a bad message")
        self.pos = pos + 1 + width
        return int.from_bytes(buf[pos + 1 : pos + 1 + width], "little")

    def fixed(self, n: int) -> bytes:
        if self.end - self.pos < n:
            raise WireError(
                f"message truncated: expected {n} more bytes; the peer sent a bad message"
            )
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return bytes(b)

    def buffer(self) -> bytes:
        n = self.uint()
        if n > self.end - self.pos:
            raise WireError("buffer length exceeds the message; the peer sent a bad message")
        return self.fixed(n)

    def count(self, item_min_bytes: int) -> int:
        """An array count, rejected when the remaining bytes cannot hold that many items."""
        n = self.uint()
        if n * item_min_bytes > self.end - self.pos:
            raise WireError(
                f"array of {n} items cannot fit in the message; the peer sent a bad message"
            )
        return n

    def nodes(self) -> list[Node]:
        # Hot (every proof node received): the uint and fixed reads inline, bounds checked once.
        # A read past the end either indexes past it (IndexError) or leaves pos beyond it.
        n = self.count(NODE_MIN_BYTES)
        buf, pos = self.buf, self.pos
        from_bytes = int.from_bytes
        out = []
        try:
            for _ in range(n):
                a = buf[pos]
                if a <= 0xFC:
                    index = a
                    pos += 1
                else:
                    w = 2 if a == 0xFD else 4 if a == 0xFE else 8
                    index = from_bytes(buf[pos + 1 : pos + 1 + w], "little")
                    pos += 1 + w
                a = buf[pos]
                if a <= 0xFC:
                    size = a
                    pos += 1
                else:
                    w = 2 if a == 0xFD else 4 if a == 0xFE else 8
                    size = from_bytes(buf[pos + 1 : pos + 1 + w], "little")
                    pos += 1 + w
                out.append(Node(index, size, bytes(buf[pos : pos + 32])))
                pos += 32
        except IndexError:
            pos = self.end + 1
        if pos > self.end:
            raise WireError("message truncated inside a proof node; the peer sent a bad message")
        self.pos = pos
        return out

    def rest(self) -> bytes:
        b = bytes(self.buf[self.pos : self.end])
        self.pos = self.end
        return b

    def done(self) -> None:
        if self.pos != self.end:
            raise WireError(
                f"{self.end - self.pos} unexpected trailing bytes; the peer sent a bad message"
            )


def _dec_sync(r: _Reader) -> Sync:
    flags = r.uint()
    return Sync(
        fork=r.uint(),
        length=r.uint(),
        remote_length=r.uint(),
        can_upgrade=bool(flags & 1),
        uploading=bool(flags & 2),
        downloading=bool(flags & 4),
        has_manifest=bool(flags & 8),
        allow_push=bool(flags & 16),
    )


def _dec_request(r: _Reader) -> Request:
    flags = r.uint()
    m = Request(id=r.uint(), fork=r.uint())
    if flags & 1:
        m.block = RequestBlock(r.uint(), r.uint())
    if flags & 2:
        m.hash = RequestBlock(r.uint(), r.uint())
    if flags & 4:
        m.seek = RequestSeek(r.uint(), r.uint())
    if flags & 8:
        m.upgrade = RequestUpgrade(r.uint(), r.uint())
    m.manifest = bool(flags & 16)
    if flags & 32:
        m.priority = r.uint()
    m.wait = bool(flags & 64)
    return m


def _dec_data(r: _Reader) -> Data:
    flags = r.uint()
    m = Data(request=r.uint(), fork=r.uint())
    if flags & 1:
        index = r.uint()
        value = r.buffer()
        m.block = DataBlock(index, value, r.nodes())
    if flags & 2:
        m.hash = DataHash(r.uint(), r.nodes())
    if flags & 4:
        m.seek = DataSeek(r.uint(), r.nodes())
    if flags & 8:
        start = r.uint()
        length = r.uint()
        nodes = r.nodes()
        additional = r.nodes()
        signature = r.buffer()
        m.upgrade = DataUpgrade(start, length, nodes, additional, signature)
    if flags & 16:
        # The manifest is the last field; we carry its encoding opaquely.
        m.manifest = r.rest()
        if not m.manifest:
            raise WireError(
                "data message flags a manifest but carries none; the peer sent a bad message"
            )
    return m


def _dec_cancel(r: _Reader) -> Cancel:
    return Cancel(r.uint())


def _dec_no_data(r: _Reader) -> NoData:
    request = r.uint()
    flags = r.uint()
    # Reason 0 is the same as none (it is encoded without one): one decoding for both.
    return NoData(request, (r.uint() or None) if flags & 1 else None)


def _dec_want(r: _Reader) -> Want:
    start = r.uint()
    length = r.uint()
    # The flags field is only present when non-zero (older peers never send it).
    flags = r.uint() if r.pos < r.end else 0
    return Want(start, length, bool(flags & 1))


def _dec_unwant(r: _Reader) -> Unwant:
    w = _dec_want(r)
    return Unwant(w.start, w.length, w.any)


def _dec_bitfield(r: _Reader) -> Bitfield:
    start = r.uint()
    n = r.count(4)
    raw = r.fixed(4 * n)
    return Bitfield(start, list(struct.unpack(f"<{n}I", raw)))


def _dec_range(r: _Reader) -> Range:
    flags = r.uint()
    start = r.uint()
    length = 1 if flags & 2 else r.uint()
    return Range(start, length, bool(flags & 1))


def _dec_extension(r: _Reader) -> Extension:
    raw = r.buffer()
    if len(raw) > MAX_NAME:
        raise WireError(f"extension name longer than {MAX_NAME} bytes; the peer sent a bad message")
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        raise WireError("extension name is not UTF-8; the peer sent a bad message") from None
    return Extension(name, r.rest())


def _dec_handshake(r: _Reader) -> Handshake:
    flags = r.uint()
    capability = r.fixed(32)
    signature = r.fixed(64) if flags & 2 else None
    return Handshake(capability, bool(flags & 1), signature)


def _dec_subscribe(r: _Reader) -> Subscribe:
    flags = r.uint()
    if flags == 4:
        return Subscribe(False, depth=r.uint())
    if flags > 3:
        raise WireError(f"subscribe flags {flags} are unknown; the peer sent a bad message")
    return Subscribe(bool(flags & 1), r.uint(), bool(flags & 2))


_DECODERS = (
    _dec_sync,
    _dec_request,
    _dec_cancel,
    _dec_data,
    _dec_no_data,
    _dec_want,
    _dec_unwant,
    _dec_bitfield,
    _dec_range,
    _dec_extension,
    _dec_handshake,
    _dec_subscribe,
)


def decode_payload(mtype: int, data: bytes) -> Message:
    """Decode one message body of a known type; WireError on anything malformed."""
    return _decode_from(mtype, _Reader(data))


def _decode_from(mtype: int, r: _Reader) -> Message:
    if not 0 <= mtype < len(_DECODERS):
        raise WireError(f"unknown message type {mtype}; the peer speaks another protocol version")
    msg = _DECODERS[mtype](r)
    r.done()
    return msg


def decode_message(data: bytes) -> Message:
    """Decode `uint type || payload`; WireError on anything malformed, never another exception."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("a wire message must be bytes")
    r = _Reader(bytes(data))
    # The payload is read in place, after the type (no copy of a block-sized message).
    return _decode_from(r.uint(), r)


# ---------------------------------------------------------------- framing

MAX_CHUNK = 64 * 1024  # bytes per data-channel message, header included
MAX_MESSAGE = 8 * 1024 * 1024
_MORE = 0x01  # chunk header: more chunks of this message follow
_LAST = 0x00  # chunk header: this chunk completes the message


class Framer:
    """Splits encoded messages into data-channel chunks of at most `chunk_size` bytes each."""

    def __init__(self, chunk_size: int = MAX_CHUNK, max_message: int = MAX_MESSAGE) -> None:
        if chunk_size < 2:
            raise ValueError("chunk_size must allow at least one payload byte")
        self.chunk_size = chunk_size
        self.max_message = max_message

    def frame(self, message: bytes) -> list[bytes]:
        if len(message) > self.max_message:
            raise ValueError(f"message of {len(message)} bytes exceeds {self.max_message}")
        step = self.chunk_size - 1
        if len(message) <= step:
            return [bytes([_LAST]) + message]
        chunks = []
        last = (len(message) - 1) // step * step
        for off in range(0, len(message), step):
            head = _LAST if off == last else _MORE
            chunks.append(bytes([head]) + message[off : off + step])
        return chunks


class Reassembler:
    """Joins chunks back into whole messages; WireError on a bad header or an oversized message."""

    def __init__(self, chunk_size: int = MAX_CHUNK, max_message: int = MAX_MESSAGE) -> None:
        self.chunk_size = chunk_size
        self.max_message = max_message
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Take one data-channel message; return the messages it completes (zero or one).

        After a WireError the partial message is dropped, so the next chunk starts afresh.
        """
        try:
            return self._feed(chunk)
        except WireError:
            self._parts.clear()
            self._size = 0
            raise

    def _feed(self, chunk: bytes) -> list[bytes]:
        if not chunk:
            raise WireError("empty data-channel chunk; the peer sent a bad message")
        if len(chunk) > self.chunk_size:
            raise WireError(
                f"chunk of {len(chunk)} bytes exceeds {self.chunk_size}; the peer sent a bad message"
            )
        head = chunk[0]
        if head not in (_MORE, _LAST):
            raise WireError(
                f"unknown chunk header {head}; the peer speaks another protocol version"
            )
        self._size += len(chunk) - 1
        if self._size > self.max_message:
            raise WireError(
                f"message exceeds {self.max_message} bytes; the peer sent a bad message"
            )
        self._parts.append(bytes(chunk[1:]))
        if head == _MORE:
            return []
        msg = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        return [msg]
