"""Signed stream-name records: name syntax, canonical signable bytes, signing and verification.

A record binds a human-readable name to a stream's public key; it is signed with the stream's
ed25519 key, so anyone can check it without trusting the hub that served it. The rule deciding
who owns a name (first come, first served; only the owner's newer record replaces it) lives here
too, as judge_claim(), with NameRegistry as its bounded in-memory store. Sans-IO: this module
never touches the network, the clock (time is passed in) or the filesystem.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Any

import nacl.exceptions
import nacl.signing

from streamer.core.compat import SLOTS
from streamer.core.errors import ProofError, UsageError

# Lowercase only, so two names that look alike to people are not two names; at most 63
# characters, so a name is never mistaken for a 64-hex-digit key.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
NAMESPACE = b"swarmcast/name/v1\x00"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
SECRET_KEY_BYTES = 64
MAX_TIME = 2**63 - 1


def is_valid_name(name: str) -> bool:
    """True if `name` is a syntactically valid stream name."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def validate_name(name: str) -> str:
    """Return `name` unchanged, or raise UsageError saying what a name may contain."""
    if not is_valid_name(name):
        raise UsageError(
            f"invalid stream name {name!r}: use 1-63 characters a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return name


def signable(name: str, key: bytes, time: int) -> bytes:
    """The exact bytes a name record's signature covers.

    NUL cannot occur in a valid name and the key has a fixed length, so the encoding is
    unambiguous; the namespace prefix keeps these signatures from being valid for anything else.
    """
    return NAMESPACE + name.encode("ascii") + b"\x00" + key + struct.pack(">Q", time)


@dataclass(frozen=True, **SLOTS)
class NameRecord:
    """A claim that `name` points at the stream whose public key is `key`, made at `time`."""

    name: str
    key: bytes  # 32-byte ed25519 public key of the stream
    time: int  # unix seconds; a newer record from the same key replaces an older one
    signature: bytes  # 64-byte ed25519 signature over signable(name, key, time)

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON object the hub stores and serves."""
        return {
            "name": self.name,
            "key": self.key.hex(),
            "time": self.time,
            "signature": self.signature.hex(),
        }

    def canonical_json(self) -> str:
        """The record as compact, key-sorted JSON: the exact text a hub stores and serves."""
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, obj: Any) -> NameRecord:
        """Parse a JSON object into a record (syntax only; call verify() for the signature).

        Raises ProofError when a field is missing or malformed, since records come from others.
        """
        if not isinstance(obj, dict):
            raise ProofError("name record is not a JSON object; expected {name, key, time, signature}")
        name, key, time, signature = (obj.get(f) for f in ("name", "key", "time", "signature"))
        if not is_valid_name(name):  # type: ignore[arg-type]
            raise ProofError(f"name record has an invalid name {name!r}")
        key_bytes = _hex_field("key", key, KEY_BYTES)
        sig_bytes = _hex_field("signature", signature, SIGNATURE_BYTES)
        if not isinstance(time, int) or isinstance(time, bool) or not 0 <= time <= MAX_TIME:
            raise ProofError("name record time must be a non-negative integer (unix seconds)")
        return cls(name=name, key=key_bytes, time=time, signature=sig_bytes)  # type: ignore[arg-type]

    def verify(self) -> NameRecord:
        """Return self if the signature is valid for (name, key, time); raise ProofError if not."""
        try:
            nacl.signing.VerifyKey(self.key).verify(
                signable(self.name, self.key, self.time), self.signature
            )
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
            raise ProofError(
                f"name record for {self.name!r} has a bad signature: it was not made by key "
                f"{self.key.hex()[:16]}..., do not trust it"
            ) from exc
        return self


def sign_record(name: str, secret_key: bytes, time: int) -> NameRecord:
    """Make a record for `name` signed with a 64-byte ed25519 secret key (seed || public key)."""
    validate_name(name)
    if len(secret_key) != SECRET_KEY_BYTES:
        raise UsageError(f"secret key must be {SECRET_KEY_BYTES} bytes, got {len(secret_key)}")
    if not 0 <= time <= MAX_TIME:
        raise UsageError("record time must be a non-negative integer (unix seconds)")
    signing_key = nacl.signing.SigningKey(secret_key[:32])
    key = bytes(signing_key.verify_key)
    if key != secret_key[32:]:
        raise UsageError("secret key is inconsistent: its public half does not match its seed")
    signature = signing_key.sign(signable(name, key, time)).signature
    return NameRecord(name=name, key=key, time=time, signature=signature)


def parse_verified(obj: Any) -> NameRecord:
    """Parse and verify a record received from anywhere; raises ProofError if it is not valid."""
    return NameRecord.from_json(obj).verify()


class Claim(Enum):
    """What offering a record for a name did: stored it, or why not."""

    CREATED = "created"  # the name was free; the record is stored
    UPDATED = "updated"  # the owner's newer record replaced the stored one
    UNCHANGED = "unchanged"  # the very same record is stored already
    TAKEN = "taken"  # the name belongs to another key
    STALE = "stale"  # the owner's record is not newer than the stored one
    FULL = "full"  # the registry holds as many names as it may

    @property
    def accepted(self) -> bool:
        """True if the record now stands for the name."""
        return self in (Claim.CREATED, Claim.UPDATED, Claim.UNCHANGED)

    @property
    def stores(self) -> bool:
        """True if the record must be written in place of what is stored."""
        return self in (Claim.CREATED, Claim.UPDATED)


def judge_claim(current: str | None, record: NameRecord, *, room: bool = True) -> Claim:
    """Decide a claim on `record.name`: first come, first served; only the key that owns a name
    may replace its record, and only with a newer time.

    `current` is the stored record's canonical JSON (None if the name is free); `room` says whether
    a new name may still be stored. The record's signature must have been verified already.
    """
    if current is None:
        return Claim.CREATED if room else Claim.FULL
    if current == record.canonical_json():
        return Claim.UNCHANGED
    stored = json.loads(current)
    if stored["key"] != record.key.hex():
        return Claim.TAKEN
    if stored["time"] >= record.time:
        return Claim.STALE
    return Claim.UPDATED


class NameRegistry:
    """Verified name records held in memory, at most `max_names` of them (a hub without Redis)."""

    def __init__(self, max_names: int) -> None:
        self._records: dict[str, str] = {}  # name -> canonical JSON of its record
        self._max_names = max_names

    def __len__(self) -> int:
        return len(self._records)

    def get(self, name: str) -> str | None:
        """The stored record for `name` as canonical JSON, or None."""
        return self._records.get(name)

    def put(self, record: NameRecord) -> Claim:
        """Store `record` (already verified) if judge_claim allows it; say what happened."""
        claim = judge_claim(
            self._records.get(record.name), record, room=len(self._records) < self._max_names
        )
        if claim.stores:
            self._records[record.name] = record.canonical_json()
        return claim


def _hex_field(field: str, value: Any, size: int) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise ProofError(f"name record {field} must be {2 * size} hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise ProofError(f"name record {field} is not hex") from exc
