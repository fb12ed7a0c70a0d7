"""The feed-key handshake (core.handshake.Handshaker), the one the swarm runs on every channel:
both sides verify each other, the writer is recognised, and a wrong key, a forged writer
signature or a first message that is not a whole handshake fail it."""

from __future__ import annotations

import hashlib

import pytest

from streamer.core import crypto, wire
from streamer.core.errors import HandshakeFailed
from streamer.core.handshake import Handshaker

WRITER = crypto.key_pair(b"\x07" * 32)
HH = hashlib.blake2b(b"both DTLS fingerprints", digest_size=32).digest()


def pair(
    writer_sk: bytes | None = WRITER.secret_key, key: bytes = WRITER.public_key
) -> tuple[Handshaker, Handshaker]:
    return Handshaker(WRITER.public_key, HH, True, writer_sk), Handshaker(key, HH, False)


def test_both_sides_verify_and_the_writer_is_recognised() -> None:
    writer, viewer = pair()
    (to_viewer,) = writer.datagrams_to_send()
    (to_writer,) = viewer.datagrams_to_send()
    assert viewer.receive(to_viewer) is True and viewer.done
    assert writer.receive(to_writer) is False and writer.done


def test_the_handshake_is_bound_to_the_connection_and_the_role() -> None:
    writer, _ = pair()
    elsewhere = Handshaker(WRITER.public_key, bytes(32), False)
    with pytest.raises(HandshakeFailed, match="does not know the feed key"):
        elsewhere.receive(writer.datagrams_to_send()[0])
    same_role = Handshaker(WRITER.public_key, HH, True)
    with pytest.raises(HandshakeFailed):
        same_role.receive(writer.datagrams_to_send()[0])


def test_a_wrong_feed_key_fails() -> None:
    other = crypto.key_pair(b"\x02" * 32).public_key
    writer, impostor = pair(key=other)
    with pytest.raises(HandshakeFailed, match="does not know the feed key"):
        writer.receive(impostor.datagrams_to_send()[0])
    assert not writer.done


def test_a_forged_writer_signature_fails() -> None:
    liar, viewer = pair(writer_sk=crypto.key_pair(b"\x03" * 32).secret_key)
    with pytest.raises(HandshakeFailed, match="bad signature"):
        viewer.receive(liar.datagrams_to_send()[0])


@pytest.mark.parametrize(
    "first",
    [
        wire.Framer().frame(wire.encode_message(wire.Sync(fork=0, length=3, remote_length=0)))[0],
        b"\x00" + b"\x01" * 10,  # the first chunk of a longer message
        b"\x07garbage",
        b"",
    ],
)
def test_a_first_message_that_is_not_a_whole_handshake_fails(first: bytes) -> None:
    _, viewer = pair()
    with pytest.raises(HandshakeFailed):
        viewer.receive(first)
    assert not viewer.done
