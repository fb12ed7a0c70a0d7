"""A small RTMP ingest server: accepts publishers (OBS, ffmpeg) on one listening socket, checks
the application and stream key, and turns the one accepted publisher's audio, video and metadata
messages into an FLV byte stream that PyAV demuxes.

Only what publishing needs is implemented: the plain handshake (the server offers no digest, so
clients fall back to it), the chunk stream (any chunk size, extended timestamps), AMF0 commands
(connect, releaseStream, FCPublish, createStream, publish, FCUnpublish, deleteStream) and
acknowledgements. Threads and blocking sockets: it runs beside the media worker thread and never
touches an event loop. One publisher at a time; others are refused with a status message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamer.core.errors import MediaError, RtmpError

log = logging.getLogger(__name__)

HANDSHAKE_SIZE = 1536
SERVER_CHUNK_SIZE = 4096
WINDOW_ACK_SIZE = 2_500_000
MAX_MESSAGE = 8 * 1024 * 1024  # one RTMP message; a keyframe of a 50 Mbit/s stream fits
IDLE_TIMEOUT_S = 20.0  # a publisher that sends nothing this long is gone

# message types
SET_CHUNK_SIZE, ABORT, ACK, USER_CONTROL, WINDOW_ACK, PEER_BW = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO, DATA_AMF3, COMMAND_AMF3, DATA_AMF0, COMMAND_AMF0 = 8, 9, 15, 17, 18, 20


# -- AMF0 ------------------------------------------------------------------------------------


class _End:
    pass


def amf_decode(data: bytes) -> list[Any]:
    """All AMF0 values in `data` (objects as dicts, null/undefined as None)."""
    values: list[Any] = []
    pos = 0
    while pos < len(data):
        value, pos = _amf_value(data, pos)
        values.append(value)
    return values


def _amf_value(data: bytes, pos: int) -> tuple[Any, int]:
    try:
        marker = data[pos]
        pos += 1
        if marker == 0:
            return struct.unpack_from(">d", data, pos)[0], pos + 8
        if marker == 1:
            return data[pos] != 0, pos + 1
        if marker == 2:
            n = struct.unpack_from(">H", data, pos)[0]
            return data[pos + 2 : pos + 2 + n].decode("utf-8", "replace"), pos + 2 + n
        if marker == 12:
            n = struct.unpack_from(">I", data, pos)[0]
            return data[pos + 4 : pos + 4 + n].decode("utf-8", "replace"), pos + 4 + n
        if marker in (3, 8):
            if marker == 8:
                pos += 4  # ECMA array: an approximate count, then pairs like an object
            obj: dict[str, Any] = {}
            while True:
                n = struct.unpack_from(">H", data, pos)[0]
                key = data[pos + 2 : pos + 2 + n].decode("utf-8", "replace")
                value, pos = _amf_value(data, pos + 2 + n)
                if isinstance(value, _End):
                    return obj, pos
                obj[key] = value
        if marker == 9:
            return _End(), pos
        if marker in (5, 6):
            return None, pos
        if marker == 10:
            count = struct.unpack_from(">I", data, pos)[0]
            pos += 4
            items = []
            for _ in range(count):
                value, pos = _amf_value(data, pos)
                items.append(value)
            return items, pos
        if marker == 11:
            return struct.unpack_from(">d", data, pos)[0], pos + 10
    except (IndexError, struct.error):
        raise RtmpError("truncated AMF0 value") from None
    raise RtmpError(f"unsupported AMF0 type {marker}")


def amf_encode(*values: Any) -> bytes:
    out = bytearray()
    for value in values:
        if value is None:
            out.append(5)
        elif isinstance(value, bool):
            out += bytes((1, int(value)))
        elif isinstance(value, (int, float)):
            out += b"\x00" + struct.pack(">d", float(value))
        elif isinstance(value, str):
            raw = value.encode()
            out += b"\x02" + struct.pack(">H", len(raw)) + raw
        elif isinstance(value, dict):
            out.append(3)
            for key, item in value.items():
                raw = key.encode()
                out += struct.pack(">H", len(raw)) + raw + amf_encode(item)
            out += b"\x00\x00\x09"
        else:
            raise TypeError(f"cannot encode {type(value).__name__} as AMF0")
    return bytes(out)


# -- FLV byte stream -------------------------------------------------------------------------

FLV_HEADER = b"FLV\x01\x05\x00\x00\x00\x09" + b"\x00\x00\x00\x00"


def flv_tag(kind: int, timestamp: int, payload: bytes) -> bytes:
    ts = timestamp & 0xFFFFFFFF
    head = (
        bytes((kind,))
        + len(payload).to_bytes(3, "big")
        + (ts & 0xFFFFFF).to_bytes(3, "big")
        + bytes((ts >> 24,))
        + b"\x00\x00\x00"
    )
    return head + payload + (len(payload) + 11).to_bytes(4, "big")


class BytePipe:
    """A blocking byte stream from the connection thread to PyAV's reader (a file-like object
    with read()); read() returns b"" at the end, when closed or once `stop` is set."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self._chunks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._buffer = b""
        self._ended = False
        self.stop = stop or threading.Event()

    def write(self, data: bytes) -> None:
        if data:
            self._chunks.put(data)

    def close(self) -> None:
        self._chunks.put(None)

    def read(self, size: int = -1) -> bytes:
        while not self._buffer and not self._ended:
            if self.stop.is_set():
                return b""
            try:
                chunk = self._chunks.get(timeout=0.2)
            except queue.Empty:
                continue
            if chunk is None:
                self._ended = True
            else:
                self._buffer = chunk
        if size < 0 or size >= len(self._buffer):
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


# -- the server ------------------------------------------------------------------------------


@dataclass
class Publisher:
    """One accepted publisher: its FLV bytes flow through `pipe` until it leaves."""

    address: str
    pipe: BytePipe
    started: float = field(default_factory=time.monotonic)
    # monotonic arrival time of each video message, keyed by its RTMP timestamp (ms)
    arrivals: dict[int, float] = field(default_factory=dict)
    gone: threading.Event = field(default_factory=threading.Event)
    disconnect: Callable[[], None] = lambda: None


@dataclass
class _ChunkStream:
    timestamp: int = 0
    delta: int = 0
    length: int = 0
    kind: int = 0
    stream_id: int = 0
    extended: bool = False
    payload: bytearray = field(default_factory=bytearray)


# -- the protocol, sans I/O -------------------------------------------------------------------


@dataclass(frozen=True)
class PublishRequested:
    """The client asks to publish `key` on application `app`: answer accept() or refuse()."""

    app: str
    key: str


@dataclass(frozen=True)
class MediaMessage:
    """An audio (8), video (9) or data (18) message of the accepted publisher."""

    kind: int
    timestamp: int  # milliseconds
    payload: bytes


@dataclass(frozen=True)
class PublishEnded:
    """The publisher said it is done (FCUnpublish / deleteStream)."""


RtmpEvent = PublishRequested | MediaMessage | PublishEnded


class RtmpProtocol:
    """The server side of one RTMP connection as a state machine: bytes in (receive), events
    out, bytes to send (data_to_send). It answers the connection-level commands itself and
    leaves the publish decision to its caller."""

    def __init__(self, random: bytes) -> None:
        if len(random) != HANDSHAKE_SIZE - 8:
            raise ValueError("the handshake needs 1528 random bytes")
        self._random = random
        self._buffer = bytearray()
        self._out = bytearray()
        self._state = "c0c1"  # -> "c2" -> "chunks"
        self._chunk_size = 128
        self._streams: dict[int, _ChunkStream] = {}
        self._received = 0
        self._acked = 0
        self._window = WINDOW_ACK_SIZE
        self.app: str | None = None
        self.publishing = False

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive(self, data: bytes) -> list[RtmpEvent]:
        """Take bytes from the client; RtmpError if they break the protocol."""
        self._buffer += data
        self._received += len(data)
        events: list[RtmpEvent] = []
        if self._state == "c0c1":
            if len(self._buffer) < 1 + HANDSHAKE_SIZE:
                return events
            if self._buffer[0] != 3:
                raise RtmpError(f"not an RTMP client (version byte {self._buffer[0]})")
            c1 = bytes(self._buffer[1 : 1 + HANDSHAKE_SIZE])
            del self._buffer[: 1 + HANDSHAKE_SIZE]
            # S1 with a zero version: clients then use the plain handshake (no digest check).
            self._out += b"\x03" + struct.pack(">II", 0, 0) + self._random + c1
            self._state = "c2"
        if self._state == "c2":
            if len(self._buffer) < HANDSHAKE_SIZE:
                return events
            del self._buffer[:HANDSHAKE_SIZE]
            self._state = "chunks"
            self._message(2, WINDOW_ACK, struct.pack(">I", WINDOW_ACK_SIZE))
            self._message(2, PEER_BW, struct.pack(">IB", WINDOW_ACK_SIZE, 2))
            self._message(2, SET_CHUNK_SIZE, struct.pack(">I", SERVER_CHUNK_SIZE))
        while (message := self._next_message()) is not None:
            self._handle(*message, events)
        if self._received - self._acked >= self._window:
            self._acked = self._received
            self._message(2, ACK, struct.pack(">I", self._received & 0xFFFFFFFF))
        return events

    def accept(self) -> None:
        """Let the requested publish go ahead."""
        self.publishing = True
        self._message(2, USER_CONTROL, struct.pack(">HI", 0, 1))  # Stream Begin
        self._command(
            "onStatus",
            0.0,
            None,
            {"level": "status", "code": "NetStream.Publish.Start", "description": "Publishing."},
            stream_id=1,
        )

    def refuse(self, why: str) -> None:
        """Turn the requested publish down, telling the client why (then close)."""
        self._command(
            "onStatus",
            0.0,
            None,
            {"level": "error", "code": "NetStream.Publish.BadName", "description": why},
            stream_id=1,
        )

    # -- parsing

    def _next_message(self) -> tuple[int, int, int, bytes] | None:
        """The next complete message, consuming its chunks; None until one is complete."""
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                return None
            cs = chunk
            if len(cs.payload) >= cs.length:
                payload = bytes(cs.payload)
                cs.payload.clear()
                return cs.kind, cs.timestamp, cs.stream_id, payload

    def _next_chunk(self) -> _ChunkStream | None:
        """Consume one whole chunk from the buffer into its chunk stream; None if incomplete."""
        buf = self._buffer
        if not buf:
            return None
        fmt, csid = buf[0] >> 6, buf[0] & 0x3F
        pos = 1
        if csid < 2:
            need = 1 if csid == 0 else 2
            if len(buf) < 1 + need:
                return None
            csid = 64 + buf[1] + (buf[2] * 256 if csid == 1 else 0)
            pos += need
        cs = self._streams.get(csid) or _ChunkStream()
        header_size = (11, 7, 3, 0)[fmt]
        if len(buf) < pos + header_size:
            return None
        header = buf[pos : pos + header_size]
        pos += header_size
        ts = int.from_bytes(header[0:3], "big") if fmt <= 2 else 0
        extended = ts == 0xFFFFFF if fmt <= 2 else cs.extended
        if extended:
            if len(buf) < pos + 4:
                return None
            if fmt <= 2:
                ts = struct.unpack(">I", buf[pos : pos + 4])[0]
            pos += 4
        length, kind = cs.length, cs.kind
        if fmt <= 1:
            length, kind = int.from_bytes(header[3:6], "big"), header[6]
            if length > MAX_MESSAGE:
                raise RtmpError(f"message of {length} bytes is too large")
        take = min(self._chunk_size, length - (len(cs.payload) if fmt == 3 else 0))
        if len(buf) < pos + take:
            return None
        # The whole chunk is here: apply it.
        starting = not cs.payload
        if fmt == 0:
            cs.stream_id = struct.unpack("<I", header[7:11])[0]
            cs.timestamp, cs.delta = ts, 0
        elif fmt <= 2:
            cs.delta = ts
            cs.timestamp += ts
        elif starting:
            cs.timestamp += cs.delta
        if fmt <= 2:
            cs.extended = extended
            cs.payload.clear()
        cs.length, cs.kind = length, kind
        cs.payload += buf[pos : pos + take]
        del buf[: pos + take]
        self._streams[csid] = cs
        return cs

    def _handle(self, kind: int, timestamp: int, stream_id: int, payload: bytes, events) -> None:
        if kind == SET_CHUNK_SIZE:
            size = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
            if not 1 <= size <= MAX_MESSAGE:
                raise RtmpError(f"bad chunk size {size}")
            self._chunk_size = size
        elif kind == WINDOW_ACK:
            self._window = max(1, struct.unpack(">I", payload[:4])[0])
        elif kind in (COMMAND_AMF0, COMMAND_AMF3):
            body = payload[1:] if kind == COMMAND_AMF3 else payload
            self._on_command(amf_decode(body), events)
        elif kind in (AUDIO, VIDEO, DATA_AMF0) and self.publishing:
            events.append(MediaMessage(kind, timestamp, payload))

    def _on_command(self, values: list[Any], events: list[RtmpEvent]) -> None:
        if not values or not isinstance(values[0], str):
            return
        name = values[0]
        txid = values[1] if len(values) > 1 and isinstance(values[1], float) else 0.0
        if name == "connect":
            info = values[2] if len(values) > 2 and isinstance(values[2], dict) else {}
            self.app = str(info.get("app", "")).strip("/")
            self._command(
                "_result",
                txid,
                {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
                {
                    "level": "status",
                    "code": "NetConnection.Connect.Success",
                    "description": "Connection succeeded.",
                    "objectEncoding": 0.0,
                },
            )
        elif name == "createStream":
            self._command("_result", txid, None, 1.0)
        elif name in ("releaseStream", "FCPublish", "_checkbw"):
            self._command("_result", txid, None, None)
        elif name == "publish":
            key = str(values[3]) if len(values) > 3 and values[3] is not None else ""
            events.append(PublishRequested(self.app or "", key.split("?", 1)[0]))
        elif name in ("FCUnpublish", "deleteStream", "closeStream") and self.publishing:
            self.publishing = False
            events.append(PublishEnded())

    # -- output

    def _message(self, csid: int, kind: int, payload: bytes, stream_id: int = 0) -> None:
        for i in range(0, max(1, len(payload)), SERVER_CHUNK_SIZE):
            if i == 0:  # fmt 0 (csid < 64), then fmt 3 continuations
                self._out.append(csid)
                self._out += (0).to_bytes(3, "big") + len(payload).to_bytes(3, "big")
                self._out += bytes((kind,)) + struct.pack("<I", stream_id)
            else:
                self._out.append(0xC0 | csid)
            self._out += payload[i : i + SERVER_CHUNK_SIZE]

    def _command(self, *values: Any, stream_id: int = 0) -> None:
        self._message(3 if stream_id == 0 else 5, COMMAND_AMF0, amf_encode(*values), stream_id)


# -- the server: threads and sockets around RtmpProtocol ---------------------------------------


class RtmpServer:
    """Listens on (host, port) for publishers to `app`/`key`; `on_publisher` is called (from a
    connection thread) with each accepted Publisher. Refused attempts are logged in one line."""

    def __init__(
        self,
        host: str,
        port: int,
        app: str,
        key: str,
        on_publisher: Callable[[Publisher], None],
    ) -> None:
        self.app, self.key = app, key
        self.on_publisher = on_publisher
        self._active: Publisher | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._connections: set[socket.socket] = set()
        try:
            self._sock = socket.create_server((host, port), reuse_port=False, backlog=8)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise MediaError(f"cannot listen for RTMP on {host}:{port}: {reason}") from None
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="rtmp-accept")
        self._thread.start()

    @property
    def active(self) -> Publisher | None:
        return self._active

    def close(self) -> None:
        """Stop listening and drop every connection; safe to call twice."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(2.0)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, addr = self._sock.accept()
            except OSError:
                return
            threading.Thread(
                target=self._serve,
                args=(conn, f"{addr[0]}:{addr[1]}"),
                daemon=True,
                name="rtmp-conn",
            ).start()

    def _serve(self, conn: socket.socket, address: str) -> None:
        with self._lock:
            self._connections.add(conn)
        session = _Connection(self, conn, address)
        try:
            session.run()
        except (RtmpError, OSError) as exc:
            if session.publisher is not None and not self._closed.is_set():
                log.debug("publisher %s: %s", address, exc)
        finally:
            session.finish()
            with self._lock:
                self._connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _claim(self, publisher: Publisher) -> bool:
        with self._lock:
            if self._active is not None and not self._active.gone.is_set():
                return False
            self._active = publisher
            return True

    def _release(self, publisher: Publisher) -> None:
        with self._lock:
            if self._active is publisher:
                self._active = None


class _Connection:
    """One TCP connection: RtmpProtocol over a blocking socket, until it closes."""

    def __init__(self, server: RtmpServer, conn: socket.socket, address: str) -> None:
        self.server = server
        self.conn = conn
        self.address = address
        self.protocol = RtmpProtocol(os.urandom(HANDSHAKE_SIZE - 8))
        self.publisher: Publisher | None = None
        self.header_sent = False
        self.conn.settimeout(IDLE_TIMEOUT_S)

    def run(self) -> None:
        while not self.server._closed.is_set():
            try:
                data = self.conn.recv(65536)
            except TimeoutError:
                raise RtmpError("the publisher sent nothing for a while") from None
            if not data:
                raise RtmpError("connection closed")
            events = self.protocol.receive(data)
            keep_going = True
            for event in events:
                if isinstance(event, MediaMessage) and self.publisher is not None:
                    self._on_media(event.kind, event.timestamp, event.payload)
                elif isinstance(event, PublishRequested):
                    keep_going = self._on_publish(event)
                elif isinstance(event, PublishEnded):
                    keep_going = False
                if not keep_going:
                    break
            out = self.protocol.data_to_send()
            if out:
                self.conn.sendall(out)
            if not keep_going:
                return

    def _refuse(self, why: str) -> bool:
        log.warning("refused a publisher from %s: %s", self.address.rsplit(":", 1)[0], why)
        self.protocol.refuse(why)
        return False

    def _on_publish(self, request: PublishRequested) -> bool:
        server = self.server
        if self.publisher is not None:
            return self._refuse("it asked to publish twice on one connection")
        if request.app != server.app:
            return self._refuse(
                f"wrong application {request.app!r} (the server URL must end in /{server.app})"
            )
        if request.key != server.key:
            return self._refuse("wrong stream key (check the stream key in the publisher)")
        publisher = Publisher(self.address, BytePipe(), disconnect=self._disconnect)
        if not server._claim(publisher):
            return self._refuse("another publisher is already live on this stream")
        self.publisher = publisher
        self.protocol.accept()
        server.on_publisher(publisher)
        return True

    def _on_media(self, kind: int, timestamp: int, payload: bytes) -> None:
        assert self.publisher is not None
        if kind == DATA_AMF0:
            values = amf_decode(payload)
            if not self.header_sent:
                # The FLV header says which streams to expect: FFmpeg waits for a promised one.
                meta = next((v for v in values if isinstance(v, dict)), None)
                flags = 5
                if meta is not None and ("videocodecid" in meta or "audiocodecid" in meta):
                    flags = (4 if "audiocodecid" in meta else 0) | (
                        1 if "videocodecid" in meta else 0
                    )
                self._write_header(flags)
            if values and values[0] == "@setDataFrame":
                payload = payload[3 + len(b"@setDataFrame") :]  # drop that first AMF0 string
            elif not values or values[0] != "onMetaData":
                return
        elif kind == VIDEO and len(payload) > 1 and payload[1] == 1:
            # an AVC NAL unit (not a sequence header): note when it arrived, for latency stats
            self.publisher.arrivals[timestamp] = time.monotonic()
            if len(self.publisher.arrivals) > 4096:
                for stale in list(self.publisher.arrivals)[:2048]:
                    del self.publisher.arrivals[stale]
        if not self.header_sent:
            self._write_header(5)
        self.publisher.pipe.write(flv_tag(kind, timestamp, payload))

    def _write_header(self, flags: int) -> None:
        assert self.publisher is not None
        self.header_sent = True
        self.publisher.pipe.write(b"FLV\x01" + bytes((flags,)) + FLV_HEADER[5:])

    def _disconnect(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        if self.publisher is not None:
            self.publisher.pipe.close()
            self.publisher.gone.set()
            self.server._release(self.publisher)
