"""Storage: the feed directory layout, the two-slot head and the ordering that makes it crash-safe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamer.core import storage
from streamer.core.errors import CorruptFeedError, FeedError, NotAFeedError
from streamer.core.storage import Head, Storage
from streamer.core.wire import Node

KEY = bytes(range(32))


def make(tmp_path: Path) -> Storage:
    return Storage.create(tmp_path / "feed", Head(key=KEY))


def test_create_makes_the_documented_files(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.close()
    names = sorted(p.name for p in (tmp_path / "feed").iterdir())
    assert names == ["bitfield", "data", "head", "tree"]
    assert (tmp_path / "feed" / "head").stat().st_size == 2 * storage.SLOT_BYTES


def test_nodes_live_at_40_times_index(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.put_nodes([Node(3, 14, b"\x11" * 32), Node(0, 1, b"\x22" * 32)])
    store.commit()
    store.close()
    raw = (tmp_path / "feed" / "tree").read_bytes()
    assert raw[120:160] == (14).to_bytes(8, "little") + b"\x11" * 32
    assert raw[0:40] == (1).to_bytes(8, "little") + b"\x22" * 32
    assert raw[40:120] == bytes(80)
    reopened = Storage.open(tmp_path / "feed")
    assert reopened.get_node(3) == Node(3, 14, b"\x11" * 32)
    assert reopened.get_node(1) is None
    assert reopened.get_node(1000) is None
    reopened.close()


def test_blocks_live_at_their_byte_offset_with_holes(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.write(100, b"late")
    store.write(0, b"early")
    store.commit()
    assert store.read(100, 4) == b"late"
    assert store.read(0, 5) == b"early"
    assert store.read(5, 3) == bytes(3)
    with pytest.raises(CorruptFeedError, match="data file ends"):
        store.read(102, 10)
    store.close()


def test_head_alternates_slots_and_the_newest_valid_slot_wins(tmp_path: Path) -> None:
    store = make(tmp_path)
    first = Head(KEY, 0, 1, 5, b"\x01" * 32, b"\x02" * 64, 1, tree_flushed=1)
    second = Head(KEY, 0, 2, 9, b"\x03" * 32, b"\x04" * 64, 2, tree_flushed=0, pending=(4, 5))
    store.commit(first)
    store.commit(second)
    store.close()
    assert Storage.open(tmp_path / "feed").head == second
    # Tear the newest slot: the previous head takes over.
    head_file = tmp_path / "feed" / "head"
    raw = bytearray(head_file.read_bytes())
    newest = 0 if storage.decode_head(bytes(raw[:512]))[1] == 3 else 1
    raw[newest * 512 + 40] ^= 0xFF
    head_file.write_bytes(bytes(raw))
    reopened = Storage.open(tmp_path / "feed")
    assert reopened.head == first
    reopened.close()


def test_a_torn_first_commit_leaves_the_creation_head(tmp_path: Path) -> None:
    # The creation head (seq 1) must not share a slot with the next head (seq 2): tearing the
    # first commit's write leaves a feed that still opens, empty.
    make(tmp_path).close()
    head_file = tmp_path / "feed" / "head"
    raw = bytearray(head_file.read_bytes())
    assert storage.decode_head(bytes(raw[512:]))[1] == 1
    raw[0:512] = b"\xa5" * 512  # a torn write of seq 2, which goes to slot 0
    head_file.write_bytes(bytes(raw))
    reopened = Storage.open(tmp_path / "feed")
    assert reopened.head.length == 0
    reopened.close()


def test_both_slots_damaged_is_a_corrupt_feed(tmp_path: Path) -> None:
    make(tmp_path).close()
    (tmp_path / "feed" / "head").write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptFeedError, match="head record"):
        Storage.open(tmp_path / "feed")


def test_missing_file_is_a_corrupt_feed(tmp_path: Path) -> None:
    make(tmp_path).close()
    os.unlink(tmp_path / "feed" / "tree")
    with pytest.raises(CorruptFeedError, match="tree file is missing"):
        Storage.open(tmp_path / "feed")


def test_not_a_feed(tmp_path: Path) -> None:
    with pytest.raises(NotAFeedError, match="does not exist"):
        Storage.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAFeedError, match="has no head file"):
        Storage.open(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotAFeedError, match="not a feed directory"):
        Storage.open(tmp_path / "file")


def test_create_refuses_an_existing_feed_but_recovers_a_half_created_one(tmp_path: Path) -> None:
    make(tmp_path).close()
    with pytest.raises(FeedError, match="already holds a feed"):
        make(tmp_path)
    half = tmp_path / "half"
    half.mkdir()
    (half / "data").write_bytes(b"junk from a crashed create")
    store = Storage.create(half, Head(key=KEY))
    assert store.data_size() == 0
    store.close()


def test_bitfield_bits_past_the_signed_length_are_dropped_on_open(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.commit(Head(KEY, 0, 4, 4, b"\x01" * 32, b"\x02" * 64, 0, tree_flushed=4))
    store.bitfield.set(1)
    store.bitfield.set(6)
    store.commit()
    store.close()
    reopened = Storage.open(tmp_path / "feed")
    assert reopened.bitfield.ranges() == [(1, 2)]
    reopened.close()


def test_the_head_contiguous_count_restores_lost_bitfield_bits(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.commit(Head(KEY, 0, 8, 8, b"\x01" * 32, b"\x02" * 64, 5, tree_flushed=8))
    store.close()
    (tmp_path / "feed" / "bitfield").write_bytes(b"")
    reopened = Storage.open(tmp_path / "feed")
    assert reopened.bitfield.ranges() == [(0, 5)]
    reopened.close()


def test_create_never_clobbers_an_unrelated_directory(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "data").write_bytes(b"my thesis")
    (tmp_path / "home" / "notes.txt").write_text("x")
    with pytest.raises(FeedError, match="not empty"):
        Storage.create(tmp_path / "home", Head(key=KEY))
    assert (tmp_path / "home" / "data").read_bytes() == b"my thesis"


def test_head_round_trips_every_field() -> None:
    head = Head(
        key=KEY,
        fork=3,
        length=40,
        byte_length=123456,
        tree_hash=b"\x05" * 32,
        signature=b"\x01\x00" + b"\x07" * 64 + b"\x00\x00",  # a 68-byte multiSignature
        contiguous=12,
        signer=b"\x09" * 32,
        tree_flushed=37,
        pending=(1, 65536, 2**40),
    )
    slot = storage.encode_head(head, 7)
    assert len(slot) == storage.SLOT_BYTES
    assert storage.decode_head(slot) == (head, 7)
    with pytest.raises(ValueError):
        storage.encode_head(Head(key=KEY, length=3, tree_flushed=1, pending=(1,)), 1)
    with pytest.raises(ValueError):
        storage.encode_head(Head(key=KEY, length=30, pending=(1,) * 30), 1)
