"""The feed-key handshake that opens every replication channel, sans-IO: the one implementation,
run by the swarm on each new WebRTC channel and by a Session created with one.

Each side sends one Handshake message first: a capability (a keyed hash of the feed key, bound to
this connection's DTLS fingerprints by `handshake_hash`, so it cannot be replayed elsewhere) and,
from the broadcaster only, an ed25519 signature over that capability by the writer's key. The
peer's first data-channel message must be its whole Handshake; anything else fails the handshake.
"""

from __future__ import annotations

import hmac

from streamer.core import crypto
from streamer.core.errors import HandshakeFailed, ProofError, WireError
from streamer.core.wire import Framer, Handshake, Reassembler, decode_message, encode_message

__all__ = ["HandshakeFailed", "Handshaker", "check_handshake", "make_handshake"]



def _writer_proof(capability: bytes) -> bytes:
    # The writer signs the capability: it is bound to this connection, so it cannot be replayed.
    return capability


def make_handshake(
    key: bytes, handshake_hash: bytes, initiator: bool, writer_secret_key: bytes | None = None
) -> Handshake:
    """Our handshake for one connection: the capability, plus the writer's signature if we are it."""
    capability = crypto.replication_capability(handshake_hash, key, initiator)
    signature = None
    if writer_secret_key is not None:
        signature = crypto.sign(_writer_proof(capability), writer_secret_key)
    return Handshake(capability=capability, seeks=True, writer_signature=signature)


def check_handshake(
    handshake: Handshake, key: bytes, handshake_hash: bytes, initiator: bool
) -> bool:
    """Check the peer's handshake (`initiator` is OUR role); True if the peer is the writer.

    Raises ProofError when the capability or the writer signature does not verify.
    """
    expected = crypto.replication_capability(handshake_hash, key, not initiator)
    if not hmac.compare_digest(handshake.capability, expected):
        raise ProofError("handshake capability does not match: the peer does not know the feed key")
    if handshake.writer_signature is None:
        return False
    if not crypto.verify(_writer_proof(handshake.capability), handshake.writer_signature, key):
        raise ProofError("handshake claims the writer key with a bad signature")
    return True


class Handshaker:
    """One side of the handshake on one channel: send `datagrams_to_send()` first, then pass the
    peer's first data-channel message to `receive`, which returns whether the peer is the writer
    or raises HandshakeFailed."""

    def __init__(
        self,
        key: bytes,
        handshake_hash: bytes,
        initiator: bool,
        writer_secret_key: bytes | None = None,
    ) -> None:
        self._key = key
        self._hash = handshake_hash
        self._initiator = initiator
        self.message = make_handshake(key, handshake_hash, initiator, writer_secret_key)
        self.remote_is_writer: bool | None = None  # None until the peer's handshake verified

    @property
    def done(self) -> bool:
        return self.remote_is_writer is not None

    def datagrams_to_send(self, chunk_size: int | None = None) -> list[bytes]:
        """Our handshake as data-channel messages (one: it is far smaller than any chunk)."""
        framer = Framer() if chunk_size is None else Framer(chunk_size)
        return framer.frame(encode_message(self.message))

    def receive(self, data: bytes) -> bool:
        """Check the peer's first data-channel message; True if the peer proved it is the writer."""
        try:
            messages = Reassembler().feed(data)
            theirs = decode_message(messages[0]) if messages else None
        except WireError as e:
            raise HandshakeFailed(f"bad handshake message: {e}") from None
        if not isinstance(theirs, Handshake):
            got = "part of a message" if theirs is None else type(theirs).__name__
            raise HandshakeFailed(f"its first message is not a handshake ({got})")
        try:
            self.remote_is_writer = check_handshake(theirs, self._key, self._hash, self._initiator)
        except ProofError as e:
            raise HandshakeFailed(str(e)) from None
        return self.remote_is_writer
