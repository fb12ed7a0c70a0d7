"""The name ownership rule (streamer.core.names.judge_claim) and the in-memory NameRegistry,
as plain unit tests."""

from __future__ import annotations

import json

import nacl.signing

from streamer.core import names
from streamer.core.names import Claim, NameRegistry, judge_claim


def secret_key() -> bytes:
    signing = nacl.signing.SigningKey.generate()
    return bytes(signing) + bytes(signing.verify_key)


OWNER, OTHER = secret_key(), secret_key()


def test_first_claim_creates_and_the_same_record_is_unchanged():
    reg = NameRegistry(max_names=10)
    record = names.sign_record("show", OWNER, 100)
    assert reg.put(record) is Claim.CREATED
    assert reg.get("show") == record.canonical_json()
    assert reg.put(record) is Claim.UNCHANGED
    assert len(reg) == 1


def test_only_the_owner_replaces_a_record_and_only_with_a_newer_one():
    reg = NameRegistry(max_names=10)
    reg.put(names.sign_record("show", OWNER, 100))
    assert reg.put(names.sign_record("show", OTHER, 200)) is Claim.TAKEN
    assert reg.put(names.sign_record("show", OWNER, 100 - 1)) is Claim.STALE
    newer = names.sign_record("show", OWNER, 101)
    assert reg.put(newer) is Claim.UPDATED
    assert reg.get("show") == newer.canonical_json()


def test_a_full_registry_refuses_new_names_but_updates_old_ones():
    reg = NameRegistry(max_names=1)
    assert reg.put(names.sign_record("one", OWNER, 1)) is Claim.CREATED
    assert reg.put(names.sign_record("two", OWNER, 1)) is Claim.FULL
    assert reg.get("two") is None
    assert reg.put(names.sign_record("one", OWNER, 2)) is Claim.UPDATED


def test_claim_outcomes_say_whether_the_record_stands():
    assert {c for c in Claim if c.accepted} == {Claim.CREATED, Claim.UPDATED, Claim.UNCHANGED}
    assert {c for c in Claim if c.stores} == {Claim.CREATED, Claim.UPDATED}


def test_judge_claim_reads_the_stored_canonical_json():
    stored = names.sign_record("show", OWNER, 50).canonical_json()
    assert judge_claim(None, names.sign_record("show", OTHER, 1)) is Claim.CREATED
    assert judge_claim(None, names.sign_record("show", OTHER, 1), room=False) is Claim.FULL
    assert judge_claim(stored, names.sign_record("show", OWNER, 50)) is Claim.UNCHANGED
    assert judge_claim(stored, names.sign_record("show", OWNER, 51)) is Claim.UPDATED
    assert judge_claim(stored, names.sign_record("show", OTHER, 51)) is Claim.TAKEN


def test_canonical_json_round_trips_and_is_compact():
    record = names.sign_record("show", OWNER, 7)
    text = record.canonical_json()
    assert " " not in text
    assert names.parse_verified(json.loads(text)) == record
