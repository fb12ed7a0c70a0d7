"""Signaling messages no outsider can forge and no insider can send in another peer's name
(sans-IO): a MAC under a key derived from the stream key and an ed25519 signature by the sender's
own key, both over the message's canonical bytes, whose peer id is the hash of that key; and
replay protection (a timestamp window and a cache of recent nonces). Time is passed in; nothing
here does I/O.

The hub, and anyone on it, sees only the discovery key, from which the signaling key cannot be
derived; so a message with a valid MAC was made by someone who knows the stream key. On a named
stream anyone may know the key; the signature still ties each message to the one node whose key
hashes to its `from`. See docs/signaling.md ("Signed messages") for the exact construction.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import struct
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from streamer.core import crypto

SIGNAL_LABEL = b"swarmcast/signal/v1"
PEER_ID_LABEL = b"swarmcast/peer-id/v1"
# The message fields covered by the MAC, in this order; a receiver reads no other field.
MAC_FIELDS = ("type", "from", "to", "ts", "nonce", "n", "evict", "sdp")
WINDOW_MS = 60_000  # a message more than this far from the receiver's clock is refused
MAX_NONCES = 16_384  # (sender, nonce) pairs remembered to refuse replays within the window
NONCE = re.compile(r"[0-9a-f]{16}")
MAC = re.compile(r"[0-9a-f]{64}")
PUBLIC_KEY = re.compile(r"[0-9a-f]{64}")
SIGNATURE = re.compile(r"[0-9a-f]{128}")


class Verdict(enum.Enum):
    """What a receiver makes of a message's proof; each refusal has a stats label."""

    OK = "ok"
    NO_PROOF = "no_proof"  # no mac, ts, nonce, pk or sig, or ones of the wrong shape
    BAD_MAC = "bad_mac"  # the MAC does not match: made without the stream key, or altered
    NOT_SENDER = "not_sender"  # `from` is not the peer id of `pk`: sent in another's name
    BAD_SIGNATURE = "bad_signature"  # the signature does not verify under `pk`
    STALE = "stale"  # ts outside the window: an old message replayed, or a clock far off
    REPLAY = "replay"  # this sender's nonce was seen already


def signal_key(feed_key: bytes) -> bytes:
    """The MAC key of a stream's signaling: BLAKE2b-256 keyed with the stream key over the label."""
    if len(feed_key) != 32:
        raise ValueError("a stream key is 32 bytes")
    return hashlib.blake2b(SIGNAL_LABEL, digest_size=32, key=feed_key).digest()


def peer_id_of(public_key: bytes) -> str:
    """The peer id of a node's signaling key: 32 hex digits of BLAKE2b-128(label ‖ key)."""
    return hashlib.blake2b(PEER_ID_LABEL + public_key, digest_size=16).hexdigest()


def _text(value: object) -> str | None:
    """A field value as the text the MAC covers; None if it has a type no field may have."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    return None


def mac_input(discovery_key: bytes, message: Mapping[str, Any]) -> bytes | None:
    """The bytes the MAC covers: label, discovery key, then each of MAC_FIELDS as 0x00 (absent)
    or 0x01 ‖ u32be(length) ‖ UTF-8 text. None if a covered field has an unusable value."""
    parts = [struct.pack(">I", len(SIGNAL_LABEL)), SIGNAL_LABEL,
             struct.pack(">I", len(discovery_key)), discovery_key]
    for name in MAC_FIELDS:
        if name not in message:
            parts.append(b"\x00")
            continue
        text = _text(message[name])
        if text is None:
            return None
        data = text.encode("utf-8", "surrogatepass")
        parts += [b"\x01", struct.pack(">I", len(data)), data]
    return b"".join(parts)


def compute_mac(key: bytes, discovery_key: bytes, message: Mapping[str, Any]) -> str | None:
    """The MAC of `message` in hex: BLAKE2b-256 keyed with the signaling key over mac_input."""
    data = mac_input(discovery_key, message)
    if data is None:
        return None
    return hashlib.blake2b(data, digest_size=32, key=key).hexdigest()


class SignalAuth:
    """Seals outgoing messages (as node `identity`) and checks incoming ones, for one stream."""

    def __init__(
        self, feed_key: bytes, discovery_key: bytes, identity: crypto.KeyPair | None = None, *,
        window_ms: int = WINDOW_MS, max_nonces: int = MAX_NONCES,
    ) -> None:
        self._key = signal_key(feed_key)
        self._dk = discovery_key
        self.identity = identity or crypto.key_pair()
        self.peer_id = peer_id_of(self.identity.public_key)
        self.window_ms = window_ms
        self._max_nonces = max_nonces
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()  # -> ts, oldest first

    def seal(self, message: Mapping[str, Any], now_ms: int, nonce: str) -> dict[str, Any]:
        """`message` from us: with `from`, `ts`, `nonce` (16 hex digits), `pk`, `mac`, `sig`."""
        if not NONCE.fullmatch(nonce):
            raise ValueError("a nonce is 16 lowercase hex digits")
        sealed = {k: v for k, v in message.items() if k not in ("mac", "sig", "pk")}
        sealed["from"] = self.peer_id
        sealed["ts"] = int(now_ms)
        sealed["nonce"] = nonce
        data = mac_input(self._dk, sealed)
        if data is None:
            raise ValueError("a signed field holds a value that is not a string, int or bool")
        sealed["pk"] = self.identity.public_key.hex()
        sealed["mac"] = hashlib.blake2b(data, digest_size=32, key=self._key).hexdigest()
        sealed["sig"] = crypto.sign(data, self.identity.secret_key).hex()
        return sealed

    def check(self, message: Mapping[str, Any], now_ms: int) -> Verdict:
        """Whether `message` proves knowledge of the stream key and its sender's identity, is
        fresh and was not seen before. Only an OK message enters the nonce cache."""
        mac, ts, nonce, sender, pk, sig = (
            message.get(k) for k in ("mac", "ts", "nonce", "from", "pk", "sig")
        )
        if not (isinstance(mac, str) and MAC.fullmatch(mac) and isinstance(nonce, str)
                and NONCE.fullmatch(nonce) and isinstance(ts, int) and not isinstance(ts, bool)
                and isinstance(sender, str) and isinstance(pk, str) and PUBLIC_KEY.fullmatch(pk)
                and isinstance(sig, str) and SIGNATURE.fullmatch(sig)):
            return Verdict.NO_PROOF
        data = mac_input(self._dk, message)
        if data is None:
            return Verdict.BAD_MAC
        expected = hashlib.blake2b(data, digest_size=32, key=self._key).hexdigest()
        if not hmac.compare_digest(expected, mac):
            return Verdict.BAD_MAC
        # Only a holder of the stream key gets this far, so only insiders cost a verify.
        public_key = bytes.fromhex(pk)
        if peer_id_of(public_key) != sender:
            return Verdict.NOT_SENDER
        if not crypto.verify(data, bytes.fromhex(sig), public_key):
            return Verdict.BAD_SIGNATURE
        if abs(now_ms - ts) > self.window_ms:
            return Verdict.STALE
        self._forget(now_ms)
        if (sender, nonce) in self._seen:
            return Verdict.REPLAY
        self._seen[(sender, nonce)] = ts
        if len(self._seen) > self._max_nonces:
            # A flood of valid messages (only insiders can make them): the oldest go first;
            # the window still refuses anything older than it.
            self._seen.popitem(last=False)
        return Verdict.OK

    def _forget(self, now_ms: int) -> None:
        """Drop nonces whose messages are outside the window now: their replays are STALE."""
        while self._seen:
            key, ts = next(iter(self._seen.items()))
            if now_ms - ts <= self.window_ms:
                break
            del self._seen[key]
