"""The signaling MAC, sender signatures and replay protection (core.signal), with a virtual
clock: a sealed message verifies; any change to a covered field, another stream's key or
discovery key, a missing proof, a message in another peer's name, a bad signature, a stale
timestamp or a replayed nonce is refused; the worked value of docs/signaling.md."""

from __future__ import annotations

import hashlib

import pytest

from streamer.core import crypto
from streamer.core.signal import (
    MAC_FIELDS,
    SignalAuth,
    Verdict,
    compute_mac,
    mac_input,
    peer_id_of,
    signal_key,
)

KEY = bytes(range(32))
DK = crypto.discovery_key(KEY)
NODE = crypto.key_pair(b"\x01" * 32)
PEER = peer_id_of(NODE.public_key)
OTHER = "fedcba9876543210fedcba9876543210"
NOW = 1_700_000_000_000


def hello() -> dict:
    return {"type": "hello", "to": OTHER, "n": 0, "evict": True}


def sender() -> SignalAuth:
    return SignalAuth(KEY, DK, NODE)


def test_a_sealed_message_verifies_once() -> None:
    receiver = SignalAuth(KEY, DK)
    sealed = sender().seal(hello(), NOW, "00112233aabbccdd")
    assert sealed["from"] == PEER and sealed["pk"] == NODE.public_key.hex()
    assert len(sealed["sig"]) == 128
    assert sealed["ts"] == NOW and sealed["nonce"] == "00112233aabbccdd" and len(sealed["mac"]) == 64
    assert receiver.check(sealed, NOW + 500) is Verdict.OK
    assert receiver.check(sealed, NOW + 600) is Verdict.REPLAY
    # Another receiver (its own cache) takes it too: a broadcast reaches everyone.
    assert SignalAuth(KEY, DK).check(sealed, NOW) is Verdict.OK


@pytest.mark.parametrize(
    ("field", "value"),
    [("type", "bye"), ("from", OTHER), ("to", PEER), ("n", 1), ("evict", False), ("sdp", "x"),
     ("ts", NOW + 1), ("nonce", "00112233aabbccde")],
)
def test_changing_any_covered_field_breaks_the_mac(field: str, value: object) -> None:
    sealed = sender().seal(hello(), NOW, "00112233aabbccdd")
    assert SignalAuth(KEY, DK).check({**sealed, field: value}, NOW) is Verdict.BAD_MAC


def test_absent_and_empty_fields_differ() -> None:
    sealed = sender().seal({"type": "bye"}, NOW, "00112233aabbccdd")
    assert SignalAuth(KEY, DK).check({**sealed, "to": ""}, NOW) is Verdict.BAD_MAC
    assert SignalAuth(KEY, DK).check({**sealed, "sdp": ""}, NOW) is Verdict.BAD_MAC
    # Fields outside the MAC (msg_id of several hubs) may be added on the way.
    assert SignalAuth(KEY, DK).check({**sealed, "msg_id": "abcd"}, NOW) is Verdict.OK


def test_without_the_stream_key_no_message_passes() -> None:
    other_key = bytes(32)
    forged = SignalAuth(other_key, DK, NODE).seal(hello(), NOW, "00112233aabbccdd")
    assert SignalAuth(KEY, DK).check(forged, NOW) is Verdict.BAD_MAC
    # The discovery key (what the hub sees) is no signaling key either.
    sealed = sender().seal(hello(), NOW, "00112233aabbccdd")
    forged = {**sealed, "mac": compute_mac(DK, DK, sealed)}
    assert SignalAuth(KEY, DK).check(forged, NOW) is Verdict.BAD_MAC
    # Another stream's swarm does not take it either (the discovery key is covered).
    other_dk = crypto.discovery_key(bytes(31) + b"\x01")
    sealed = SignalAuth(KEY, other_dk, NODE).seal(hello(), NOW, "00112233aabbccdd")
    assert SignalAuth(KEY, DK).check(sealed, NOW) is Verdict.BAD_MAC


def test_an_insider_cannot_send_in_another_peers_name() -> None:
    """Someone who knows the key (a named stream) makes valid MACs, but not another's signature."""
    insider = crypto.key_pair(b"\x02" * 32)
    message = {"type": "bye", "from": PEER, "ts": NOW, "nonce": "00112233aabbccdd"}
    data = mac_input(DK, message)
    assert data is not None
    forged = {
        **message, "pk": insider.public_key.hex(), "mac": compute_mac(signal_key(KEY), DK, message),
        "sig": crypto.sign(data, insider.secret_key).hex(),
    }
    assert SignalAuth(KEY, DK).check(forged, NOW) is Verdict.NOT_SENDER
    forged["pk"] = NODE.public_key.hex()  # the real peer's key, but the insider's signature
    assert SignalAuth(KEY, DK).check(forged, NOW) is Verdict.BAD_SIGNATURE
    forged["sig"] = crypto.sign(data, NODE.secret_key).hex()
    assert SignalAuth(KEY, DK).check(forged, NOW) is Verdict.OK


@pytest.mark.parametrize(
    "damage",
    [{"mac": None}, {"mac": "zz"}, {"ts": "1700000000000"}, {"ts": True}, {"nonce": "short"},
     {"ts": 1.5}, {"pk": None}, {"sig": None}, {"sig": "00"}],
)
def test_messages_without_a_usable_proof_are_refused(damage: dict) -> None:
    sealed = sender().seal(hello(), NOW, "00112233aabbccdd")
    message = {k: v for k, v in {**sealed, **damage}.items() if v is not None}
    assert SignalAuth(KEY, DK).check(message, NOW) in (Verdict.NO_PROOF, Verdict.BAD_MAC)
    assert SignalAuth(KEY, DK).check({**hello(), "from": PEER}, NOW) is Verdict.NO_PROOF


def test_stale_messages_and_replays_are_refused_with_a_virtual_clock() -> None:
    auth = SignalAuth(KEY, DK, window_ms=60_000)
    sealed = sender().seal(hello(), NOW, "00112233aabbccdd")
    assert auth.check(sealed, NOW + 60_001) is Verdict.STALE
    assert auth.check(sealed, NOW - 60_001) is Verdict.STALE  # from the future: a clock far off
    assert auth.check(sealed, NOW + 60_000) is Verdict.OK
    assert auth.check(sealed, NOW + 60_000) is Verdict.REPLAY
    # Once out of the window the nonce is forgotten, and the replay is stale anyway.
    later = sender().seal(hello(), NOW + 200_000, "0000000000000001")
    assert auth.check(later, NOW + 200_000) is Verdict.OK
    assert auth.check(sealed, NOW + 200_000) is Verdict.STALE
    assert len(auth._seen) == 1


def test_nonce_cache_is_bounded() -> None:
    auth = SignalAuth(KEY, DK, max_nonces=4)
    node = sender()
    for i in range(10):
        assert auth.check(node.seal(hello(), NOW, f"{i:016x}"), NOW) is Verdict.OK
    assert len(auth._seen) == 4


def test_worked_value_of_the_docs() -> None:
    """docs/signaling.md quotes these bytes; a browser implementation checks itself against them."""
    assert signal_key(KEY).hex() == hashlib.blake2b(
        b"swarmcast/signal/v1", digest_size=32, key=KEY
    ).hexdigest()
    assert PEER == DOCS_PEER
    message = {"type": "hello", "from": PEER, "n": 2, "ts": NOW, "nonce": "00112233aabbccdd"}
    data = mac_input(DK, message)
    assert data is not None
    expected = (
        b"\x00\x00\x00\x13swarmcast/signal/v1" + b"\x00\x00\x00\x20" + DK
        + b"\x01\x00\x00\x00\x05hello" + b"\x01\x00\x00\x00\x20" + PEER.encode()
        + b"\x00" + b"\x01\x00\x00\x00\x0d1700000000000" + b"\x01\x00\x00\x00\x1000112233aabbccdd"
        + b"\x01\x00\x00\x00\x012" + b"\x00\x00"
    )
    assert data == expected
    assert len(MAC_FIELDS) == 8
    sealed = sender().seal({"type": "hello", "n": 2}, NOW, "00112233aabbccdd")
    assert sealed["mac"] == DOCS_MAC
    assert sealed["sig"] == DOCS_SIG


DOCS_PEER = "0c87d52deb8d60032fb2600c05c1f651"
DOCS_MAC = "ced694c6d2dd721c6ab3eb6086b0d40edc1b77fb83a6972bc6b3f7555a697ef3"
DOCS_SIG = (
    "f3c92ac2f4096e95e318a6fcfb38059b4cde03a48c5356ec63ff0b12e4b54f09"
    "f4dff16193db863acbdee412669de5265ba2f3da1366bdaaec1339217069d20d"
)
