"""The sans-IO RTMP server protocol (media/rtmp.py) fed the bytes a publisher sends: handshake,
chunk streams split at any byte, extended timestamps, chunk size changes, AMF0, the publish
decision, acknowledgements; and the FLV tags made for PyAV."""

from __future__ import annotations

import struct

import pytest

from streamer.media.rtmp import (
    ACK,
    AUDIO,
    COMMAND_AMF0,
    HANDSHAKE_SIZE,
    SERVER_CHUNK_SIZE,
    SET_CHUNK_SIZE,
    VIDEO,
    MediaMessage,
    PublishEnded,
    PublishRequested,
    RtmpError,
    RtmpProtocol,
    amf_decode,
    amf_encode,
    flv_tag,
)

RANDOM = bytes(range(256)) * 5 + bytes(248)
C1 = b"\x00" * 8 + bytes(reversed(RANDOM))


def chunks(
    csid: int,
    kind: int,
    payload: bytes,
    timestamp: int = 0,
    size: int = 128,
    stream_id: int = 0,
    first_fmt: int = 0,
) -> bytes:
    """A message as a client writes it: one fmt 0/1 chunk, then fmt 3 continuations."""
    ts_field = min(timestamp, 0xFFFFFF)
    ext = struct.pack(">I", timestamp) if ts_field == 0xFFFFFF else b""
    out = bytearray()
    for i in range(0, max(1, len(payload)), size):
        if i == 0:
            out.append((first_fmt << 6) | csid)
            out += ts_field.to_bytes(3, "big") + len(payload).to_bytes(3, "big") + bytes((kind,))
            if first_fmt == 0:
                out += struct.pack("<I", stream_id)
        else:
            out.append(0xC0 | csid)
        out += ext + payload[i : i + size]
    return bytes(out)


def command(*values, stream_id: int = 0) -> bytes:
    return chunks(3, COMMAND_AMF0, amf_encode(*values), stream_id=stream_id)


def messages(data: bytes) -> list[tuple[int, list]]:
    """(type, AMF0 values or raw payload) of what the server sent, after its handshake."""
    proto = RtmpProtocol(RANDOM)  # reuse the parser on the server's own output
    proto._state = "chunks"
    proto._chunk_size = SERVER_CHUNK_SIZE  # announced before any command
    out = []
    while True:
        proto._buffer += data
        data = b""
        message = proto._next_message()
        if message is None:
            return out
        kind, _, _, payload = message
        if kind == SET_CHUNK_SIZE:
            proto._chunk_size = struct.unpack(">I", payload)[0]
        out.append((kind, amf_decode(payload) if kind == COMMAND_AMF0 else payload))


PUBLISH = (
    chunks(2, SET_CHUNK_SIZE, struct.pack(">I", 4096))
    + command("connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live", "type": "nonprivate"})
    + command("releaseStream", 2.0, None, "KEY")
    + command("FCPublish", 3.0, None, "KEY")
    + command("createStream", 4.0, None)
    + command("publish", 5.0, None, "KEY?token=1", "live", stream_id=1)
)


def handshake(proto: RtmpProtocol) -> bytes:
    assert proto.receive(b"\x03" + C1) == []
    s0s1s2 = proto.data_to_send()
    assert len(s0s1s2) == 1 + 2 * HANDSHAKE_SIZE
    assert s0s1s2[0] == 3 and s0s1s2[5:9] == b"\x00\x00\x00\x00"  # zero version: plain handshake
    assert s0s1s2[1 + HANDSHAKE_SIZE :] == C1  # S2 echoes C1
    assert proto.receive(b"\x00" * HANDSHAKE_SIZE) == []
    return proto.data_to_send()


def test_a_publisher_is_asked_about_and_then_streams() -> None:
    proto = RtmpProtocol(RANDOM)
    handshake(proto)
    events = proto.receive(PUBLISH)
    assert events == [PublishRequested("live", "KEY")]
    sent = messages(proto.data_to_send())
    results = [values for kind, values in sent if kind == COMMAND_AMF0]
    assert results[0][0] == "_result" and results[0][3]["code"] == "NetConnection.Connect.Success"
    assert results[-1] == ["_result", 4.0, None, 1.0]  # createStream -> stream 1
    proto.accept()
    status = messages(proto.data_to_send())[-1][1]
    assert status[0] == "onStatus" and status[3]["code"] == "NetStream.Publish.Start"
    video = bytes([0x17, 1]) + bytes(range(200)) * 30  # 6 KB: chunked at the client's 4096
    events = proto.receive(chunks(6, VIDEO, video, timestamp=40, size=4096, stream_id=1))
    assert events == [MediaMessage(VIDEO, 40, video)]
    assert proto.receive(command("deleteStream", 6.0, None, 1.0)) == [PublishEnded()]


def test_refusing_says_why() -> None:
    proto = RtmpProtocol(RANDOM)
    handshake(proto)
    proto.receive(PUBLISH)
    proto.data_to_send()
    proto.refuse("wrong stream key")
    status = messages(proto.data_to_send())[-1][1]
    assert status[3] == {
        "level": "error",
        "code": "NetStream.Publish.BadName",
        "description": "wrong stream key",
    }
    audio = chunks(4, AUDIO, b"\xaf\x01" + b"x" * 10, stream_id=1)
    assert proto.receive(audio) == []  # nothing flows from a publisher that was not accepted


def test_any_split_of_the_byte_stream_gives_the_same_events() -> None:
    media = (
        chunks(6, VIDEO, b"\x17\x01" + b"v" * 300, timestamp=0x1234567, stream_id=1)  # extended
        + chunks(4, AUDIO, b"\xaf\x01" + b"a" * 150, timestamp=20, stream_id=1)
        + chunks(4, AUDIO, b"\xaf\x01" + b"b" * 150, timestamp=23, first_fmt=1)  # a delta
    )
    publish = PUBLISH[len(chunks(2, SET_CHUNK_SIZE, bytes(4))) :]  # chunks of 128 bytes
    whole = b"\x03" + C1 + b"\x00" * HANDSHAKE_SIZE + publish
    for step in (1, 7, 129, 1000):
        proto = RtmpProtocol(RANDOM)
        events = []
        for i in range(0, len(whole), step):
            events += proto.receive(whole[i : i + step])
        assert events == [PublishRequested("live", "KEY")]
        proto.accept()
        for i in range(0, len(media), step):
            events += proto.receive(media[i : i + step])
        assert events[1:] == [
            MediaMessage(VIDEO, 0x1234567, b"\x17\x01" + b"v" * 300),
            MediaMessage(AUDIO, 20, b"\xaf\x01" + b"a" * 150),
            MediaMessage(AUDIO, 43, b"\xaf\x01" + b"b" * 150),
        ]


def test_acknowledgements_follow_the_window() -> None:
    proto = RtmpProtocol(RANDOM)
    handshake(proto)
    proto.receive(chunks(2, 5, struct.pack(">I", 5000)) + PUBLISH)  # window: 5000 bytes
    proto.accept()
    proto.data_to_send()
    proto.receive(chunks(6, VIDEO, b"\x17\x01" + bytes(6000), size=4096, stream_id=1))
    acks = [payload for kind, payload in messages(proto.data_to_send()) if kind == ACK]
    assert len(acks) == 1 and struct.unpack(">I", acks[0])[0] > 5000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x06" + C1, "not an RTMP client"),
        (b"\x03" + C1 + bytes(HANDSHAKE_SIZE) + chunks(2, SET_CHUNK_SIZE, bytes(4)), "chunk size"),
        (
            b"\x03"
            + C1
            + bytes(HANDSHAKE_SIZE)
            + b"\x06"
            + bytes(3)
            + (2**24 - 1).to_bytes(3, "big"),
            "too large",
        ),
    ],
)
def test_broken_clients_are_errors(data: bytes, message: str) -> None:
    with pytest.raises(RtmpError, match=message):
        RtmpProtocol(RANDOM).receive(data + bytes(20))


def test_amf0_round_trips_and_flv_tags() -> None:
    values = ["onMetaData", {"width": 1280.0, "videocodecid": 7.0, "stereo": True}, None, 2.5]
    assert amf_decode(amf_encode(*values)) == values
    tag = flv_tag(VIDEO, 0x01020304, b"abc")
    assert tag[:11] == bytes([9, 0, 0, 3, 2, 3, 4, 1, 0, 0, 0]) and tag[11:14] == b"abc"
    assert tag[14:] == (14).to_bytes(4, "big")
