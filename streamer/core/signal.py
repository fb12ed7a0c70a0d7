"""Signaling messages no outsider can forge (sans-IO): a MAC under a key derived from the stream
key over the message's canonical bytes, and replay protection (a timestamp window and a cache of
recent nonces). Time is passed in; nothing here does I/O.

The hub, and anyone on it, sees only the discovery key, from which the signaling key cannot be
derived; so a message with a valid MAC was made by someone who knows the stream key. See
docs/signaling.md ("Signed messages") for the exact construction.
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

SIGNAL_LABEL = b"swarmcast/signal/v1"
# The message fields covered by the MAC, in this order; a receiver reads no other field.
MAC_FIELDS = ("type", "from", "to", "ts", "nonce", "n", "evict", "sdp")
WINDOW_MS = 60_000  # a message more than this far from the receiver's clock is refused
MAX_NONCES = 16_384  # (sender, nonce) pairs remembered to refuse replays within the window
NONCE = re.compile(r"[0-9a-f]{16}")
MAC = re.compile(r"[0-9a-f]{64}")


class Verdict(enum.Enum):
    """What a receiver makes of a message's proof; each refusal has a stats label."""

    OK = "ok"
    NO_PROOF = "no_proof"  # no mac, ts or nonce, or ones of the wrong shape
    BAD_MAC = "bad_mac"  # the MAC does not match: made without the stream key, or altered
    STALE = "stale"  # ts outside the window: an old message replayed, or a clock far off
    REPLAY = "replay"  # this sender's nonce was seen already


def signal_key(feed_key: bytes) -> bytes:
    """The MAC key of a stream's signaling: BLAKE2b-256 keyed with the stream key over the label."""
    if len(feed_key) != 32:
        raise ValueError("a stream key is 32 bytes")
    return hashlib.blake2b(SIGNAL_LABEL, digest_size=32, key=feed_key).digest()


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
    """Seals outgoing messages and checks incoming ones for one stream's swarm."""

    def __init__(
        self, feed_key: bytes, discovery_key: bytes, *, window_ms: int = WINDOW_MS,
        max_nonces: int = MAX_NONCES,
    ) -> None:
        self._key = signal_key(feed_key)
        self._dk = discovery_key
        self.window_ms = window_ms
        self._max_nonces = max_nonces
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()  # -> ts, oldest first

    def seal(self, message: Mapping[str, Any], now_ms: int, nonce: str) -> dict[str, Any]:
        """`message` with `ts`, `nonce` (16 hex digits) and `mac` added."""
        if not NONCE.fullmatch(nonce):
            raise ValueError("a nonce is 16 lowercase hex digits")
        sealed = {k: v for k, v in message.items() if k != "mac"}
        sealed["ts"] = int(now_ms)
        sealed["nonce"] = nonce
        mac = compute_mac(self._key, self._dk, sealed)
        if mac is None:
            raise ValueError("a signed field holds a value that is not a string, int or bool")
        sealed["mac"] = mac
        return sealed

    def check(self, message: Mapping[str, Any], now_ms: int) -> Verdict:
        """Whether `message` proves knowledge of the stream key, fresh and not seen before.
        Only an OK message enters the nonce cache."""
        mac, ts, nonce, sender = (message.get(k) for k in ("mac", "ts", "nonce", "from"))
        if not (isinstance(mac, str) and MAC.fullmatch(mac) and isinstance(nonce, str)
                and NONCE.fullmatch(nonce) and isinstance(ts, int) and not isinstance(ts, bool)
                and isinstance(sender, str)):
            return Verdict.NO_PROOF
        expected = compute_mac(self._key, self._dk, message)
        if expected is None or not hmac.compare_digest(expected, mac):
            return Verdict.BAD_MAC
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
