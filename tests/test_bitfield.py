"""Bitfield: one bit per block, Hypercore's byte and u32-word layout, checked against a plain set."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamer.core.bitfield import Bitfield


def test_bit_i_is_byte_i_shift_3_bit_i_and_7() -> None:
    bits = Bitfield()
    bits.set(0)
    bits.set(9)
    bits.set(15)
    assert bits.to_bytes() == bytes([0b00000001, 0b10000010])


def test_an_empty_bitfield_has_nothing() -> None:
    bits = Bitfield()
    assert not bits.get(0)
    assert bits.count == 0
    assert bits.contiguous_length == 0
    assert bits.ranges() == []
    assert bits.first_set() is None
    assert bits.first_unset() == 0


def test_contiguous_length_follows_sets_and_clears() -> None:
    bits = Bitfield()
    bits.set(1)
    assert bits.contiguous_length == 0
    bits.set(0)
    assert bits.contiguous_length == 2
    bits.set_range(2, 100)
    assert bits.contiguous_length == 100
    bits.set(40, False)
    assert bits.contiguous_length == 40


def test_ranges_lists_runs_in_order() -> None:
    bits = Bitfield()
    bits.set_range(3, 5)
    bits.set_range(8, 40)
    bits.set(63)
    assert bits.ranges() == [(3, 5), (8, 40), (63, 64)]
    assert bits.ranges(limit=20) == [(3, 5), (8, 20)]


def test_words_match_the_wire_layout() -> None:
    bits = Bitfield()
    bits.set_range(0, 8)
    bits.set(33)
    assert bits.words(0, 2) == [0xFF, 0b10]
    assert bits.words(32, 2) == [0b10, 0]
    other = Bitfield()
    other.set_words(32, [0b101])
    assert other.ranges() == [(32, 33), (34, 35)]
    with pytest.raises(ValueError):
        bits.words(5, 1)


def test_dirty_region_covers_every_change_once() -> None:
    bits = Bitfield(bytes(16))
    assert bits.take_dirty() is None
    bits.set(20)
    bits.set(70)
    assert bits.take_dirty() == (2, bits.to_bytes()[2:9])
    assert bits.take_dirty() is None


def test_loading_bytes_restores_count_and_contiguous_length() -> None:
    bits = Bitfield(bytes([0xFF, 0x0F, 0x80]))
    assert bits.count == 13
    assert bits.contiguous_length == 12
    assert bits.ranges() == [(0, 12), (23, 24)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 300), st.integers(0, 40)), max_size=30))
# Found by this test in a full run: clearing an empty range below the contiguous length moved it.
@example(ops=[(True, 0, 1), (False, 0, 0)])
def test_matches_a_set_model(ops: list[tuple[bool, int, int]]) -> None:
    bits = Bitfield()
    model: set[int] = set()
    for value, start, span in ops:
        bits.set_range(start, start + span, value)
        if value:
            model.update(range(start, start + span))
        else:
            model.difference_update(range(start, start + span))
    assert bits.count == len(model)
    assert all(bits.get(i) == (i in model) for i in range(400))
    contiguous = 0
    while contiguous in model:
        contiguous += 1
    assert bits.contiguous_length == contiguous
    assert bits.first_unset() == contiguous
    flattened = [i for start, end in bits.ranges() for i in range(start, end)]
    assert flattened == sorted(model)
    for limit in (0, 7, 64, 150):
        below = [i for start, end in bits.ranges(limit=limit) for i in range(start, end)]
        assert below == sorted(i for i in model if i < limit)
        first = bits.first_set(limit)
        assert first == min((i for i in model if i >= limit), default=None)
    reloaded = Bitfield(bits.to_bytes())
    assert reloaded.count == len(model) and reloaded.contiguous_length == contiguous
