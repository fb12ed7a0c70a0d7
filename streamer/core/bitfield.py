"""Which blocks a feed (or a remote peer) holds: one bit per block, bit i at byte i>>3, bit i&7.

The same bit layout as Hypercore's bitfield file and its u32le wire words. In-memory only: it
never touches files (storage.py persists it) and never decides whether a block is valid.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from streamer.core.compat import popcount

_U32_WORDS = struct.Struct("<I")


class Bitfield:
    """A growable set of block indexes with cheap count, contiguous length and run listing."""

    __slots__ = ("_bits", "_count", "_contiguous", "_dirty_lo", "_dirty_hi")

    def __init__(self, data: bytes = b"") -> None:
        self._bits = bytearray(data)
        self._count = popcount(int.from_bytes(self._bits, "little"))
        self._contiguous = 0
        self._advance_contiguous()
        # Byte range changed since the last take_dirty(), so storage writes only that slice.
        self._dirty_lo = len(self._bits)
        self._dirty_hi = 0

    @property
    def count(self) -> int:
        return self._count

    @property
    def contiguous_length(self) -> int:
        """n such that blocks 0..n-1 are all set and block n is not."""
        return self._contiguous

    def get(self, index: int) -> bool:
        if index < 0:
            return False
        byte = index >> 3
        return byte < len(self._bits) and bool(self._bits[byte] >> (index & 7) & 1)

    def set(self, index: int, value: bool = True) -> bool:
        """Set or clear one bit; returns True if it changed."""
        if index < 0:
            raise ValueError("a block index cannot be negative")
        byte = index >> 3
        mask = 1 << (index & 7)
        if byte >= len(self._bits):
            if not value:
                return False
            self._bits.extend(bytes(byte + 1 - len(self._bits)))
        old = self._bits[byte]
        new = old | mask if value else old & ~mask
        if new == old:
            return False
        self._bits[byte] = new
        self._count += 1 if value else -1
        self._mark_dirty(byte, byte + 1)
        if value and index == self._contiguous:
            self._advance_contiguous()
        elif not value and index < self._contiguous:
            self._contiguous = index
        return True

    def set_range(self, start: int, end: int, value: bool = True) -> None:
        """Set or clear the bits start..end-1."""
        if start < 0 or end < start:
            raise ValueError(f"bad bit range {start}..{end}")
        if start == end:
            return  # nothing to change (clearing none must not move the contiguous length)
        index = start
        # Bit-by-bit at the ragged edges, whole bytes in between: appends of many blocks stay cheap.
        while index < end and index & 7:
            self.set(index, value)
            index += 1
        full_end = end & ~7
        if index < full_end:
            lo, hi = index >> 3, full_end >> 3
            if hi > len(self._bits):
                if value:
                    self._bits.extend(bytes(hi - len(self._bits)))
                else:
                    hi = max(lo, len(self._bits))
            if lo < hi:
                before = popcount(int.from_bytes(self._bits[lo:hi], "little"))
                self._bits[lo:hi] = (b"\xff" if value else b"\x00") * (hi - lo)
                self._count += (hi - lo) * 8 - before if value else -before
                self._mark_dirty(lo, hi)
            index = full_end
        while index < end:
            self.set(index, value)
            index += 1
        if value and start <= self._contiguous:
            self._advance_contiguous()
        elif not value and start < self._contiguous:
            self._contiguous = start

    def truncate(self, length: int) -> None:
        """Clear every bit at or above length."""
        top = len(self._bits) * 8
        if length < top:
            self.set_range(length, top, False)

    def ranges(self, limit: int | None = None) -> list[tuple[int, int]]:
        """Runs of set bits as (start, end) pairs, end exclusive, in order; below limit if given."""
        bits = self._bits
        size = len(bits) * 8 if limit is None else min(limit, len(bits) * 8)
        out: list[tuple[int, int]] = []
        index = 0
        while index < size:
            index = self._next(index, True, size)
            if index >= size:
                break
            stop = self._next(index, False, size)
            out.append((index, stop))
            index = stop
        return out

    def first_unset(self, start: int = 0) -> int:
        """The first index >= start whose bit is clear."""
        return self._next(start, False, None)

    def first_set(self, start: int = 0) -> int | None:
        """The first index >= start whose bit is set, or None."""
        found = self._next(start, True, len(self._bits) * 8)
        return found if found < len(self._bits) * 8 else None

    def words(self, start: int, count: int) -> list[int]:
        """count u32 words of bits beginning at block start (a multiple of 32), for the wire."""
        if start % 32:
            raise ValueError("bitfield words start on a multiple of 32 blocks")
        lo = start >> 3
        raw = bytes(self._bits[lo : lo + 4 * count]).ljust(4 * count, b"\x00")
        return [w for (w,) in _U32_WORDS.iter_unpack(raw)]

    def set_words(self, start: int, words: Iterable[int]) -> None:
        """Set the bits that are set in u32 words describing blocks from start (a multiple of 32)."""
        if start % 32:
            raise ValueError("bitfield words start on a multiple of 32 blocks")
        for n, word in enumerate(words):
            base = start + 32 * n
            while word:
                low = word & -word
                self.set(base + low.bit_length() - 1)
                word ^= low

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def take_dirty(self) -> tuple[int, bytes] | None:
        """(byte offset, bytes) changed since the last call, or None; for incremental persistence."""
        if self._dirty_lo >= self._dirty_hi:
            return None
        lo, hi = self._dirty_lo, self._dirty_hi
        self._dirty_lo, self._dirty_hi = len(self._bits), 0
        return lo, bytes(self._bits[lo:hi])

    def _mark_dirty(self, lo: int, hi: int) -> None:
        self._dirty_lo = min(self._dirty_lo, lo)
        self._dirty_hi = max(self._dirty_hi, hi)

    def _advance_contiguous(self) -> None:
        self._contiguous = self._next(self._contiguous, False, None)

    def _next(self, index: int, value: bool, limit: int | None) -> int:
        """First index >= index whose bit equals value; limit (or, for clear bits, any index past
        the end) when there is none before it."""
        bits = self._bits
        size = len(bits) * 8
        stop = size if limit is None else min(size, limit)
        skip = 0x00 if value else 0xFF
        while index < stop:
            if index & 7 == 0:
                # Jump over whole bytes that cannot contain the bit we look for.
                found = _find_not(bits, skip, index >> 3)
                if found < 0:
                    index = size
                    break
                index = found << 3
                if index >= stop:
                    break
            if bool(bits[index >> 3] >> (index & 7) & 1) == value:
                return index
            index += 1
        if value:
            return stop
        return max(index, size) if limit is None else min(max(index, size), limit)


def _find_not(buf: bytearray, skip: int, start: int) -> int:
    """Index of the first byte from start that differs from skip, or -1."""
    stripped = buf[start:].lstrip(bytes([skip]))
    if not stripped:
        return -1
    return len(buf) - len(stripped)
