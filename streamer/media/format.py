"""The stream format inside a feed: block 0 is the stream header, every later block one segment.

Pure Python (no PyAV), so the viewer, the HLS server and tests can parse blocks cheaply. It must
never accept a block it cannot fully parse: a bad block raises StreamFormatError.

Block 0 (stream header):   b"SWCH" | u8 version | u32le json_len | JSON (utf-8) | fMP4 init (ftyp+moov)
Block i >= 1 (segment):    b"SWCS" | u8 version | u8 flags | u16le back
                           | f64le pts | f64le duration | f64le wall_clock | fMP4 fragment (moof+mdat)
pts and duration are seconds on the stream timeline (monotonic across broadcaster restarts);
wall_clock is the Unix time when the block was appended.

Version 2 (parts): each media block is one part, a CMAF chunk of about `part_duration` seconds;
FLAG_INDEPENDENT marks a part that starts with a keyframe (a join and seek point, on the segment
grid) and `back` counts the blocks back to the independent part a dependent part decodes from.
Version 1 (one block per GOP, `back` reserved as 0) still reads: every v1 media block is
independent, and decoding reports it with FLAG_INDEPENDENT set.

This module is the one place that answers questions about the format: what a block holds
(StreamHeader, Segment, SegmentHeader), whether a stream has ended (stream_ended, feed_ended),
and where blocks lie in time (Timeline).
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from streamer.core.errors import StreamFormatError

FORMAT_NAME = "swarmcast"
FORMAT_VERSION = 2  # what a new stream is written in
FORMAT_V1 = 1  # one block per GOP: still read, and written when resuming a v1 stream
READ_VERSIONS = (FORMAT_V1, FORMAT_VERSION)

HEADER_MAGIC = b"SWCH"
SEGMENT_MAGIC = b"SWCS"

FLAG_DISCONTINUITY = 1  # first segment after a broadcaster restart
FLAG_END = 2  # the stream ended cleanly here; this block carries no media
FLAG_INDEPENDENT = 4  # v2: the part starts with a keyframe (implied for every v1 media block)

_HEADER_PREFIX = struct.Struct("<4sBI")
_SEGMENT_PREFIX = struct.Struct("<4sBBHddd")



@dataclass(frozen=True, slots=True)
class Grid:
    """Where blocks fall when nothing else is known: segments of `segment` seconds, each cut into
    `parts` parts of `part` seconds (the last one takes the remainder). Version 1 streams have
    one part per segment. A first guess only: block headers say where blocks really lie."""

    segment: float
    part: float
    parts: int = 1

    @classmethod
    def of(cls, value: Grid | float) -> Grid:
        """A Grid as is, or a bare segment duration as a grid of one part per segment."""
        return value if isinstance(value, Grid) else cls(value, value, 1)

    def part_duration(self, position: int) -> float:
        """Duration of the part at `position` (0-based) within its segment."""
        if position < self.parts - 1:
            return self.part
        return max(self.part * 0.5, self.segment - self.part * (self.parts - 1))

    def place(self, index: int) -> tuple[float, int]:
        """Stream time and position within its segment of block `index` (>= 1) on the grid of
        a stream that started at 0 and never restarted."""
        k = index - 1
        seg, pos = divmod(k, self.parts)
        return seg * self.segment + pos * self.part, pos

    def index_at(self, t: float) -> int:
        """The block the grid puts stream time `t` in (>= 1)."""
        if t <= 0:
            return 1
        seg = int(t // self.segment)
        pos = min(self.parts - 1, int((t - seg * self.segment) // self.part))
        return 1 + seg * self.parts + pos


@dataclass
class StreamHeader:
    """What a viewer needs to play the stream; block 0 of every stream feed."""

    title: str
    start_time: float  # Unix time the stream started
    mime: str  # MSE type, e.g. 'video/mp4; codecs="avc1.64001f,mp4a.40.2"'
    width: int
    height: int
    fps: float
    segment_duration: float  # target seconds per segment (the keyframe grid)
    video_codec: str = "h264"
    audio_codec: str | None = "aac"
    sample_rate: int | None = None
    channels: int | None = None
    init: bytes = b""  # fMP4 init segment (ftyp + moov)
    extra: dict[str, Any] = field(default_factory=dict)
    # v2: nominal seconds per part (a whole number of frames) and parts per segment; None in v1
    part_duration: float | None = None
    parts_per_segment: int | None = None
    version: int = FORMAT_VERSION

    @property
    def block_duration(self) -> float:
        """Nominal seconds of media per block: a part (v2) or a whole segment (v1)."""
        return self.part_duration or self.segment_duration

    @property
    def grid(self) -> Grid:
        """Where blocks fall in time when their headers are not known yet."""
        if self.version == FORMAT_V1 or not self.part_duration:
            return Grid(self.segment_duration, self.segment_duration, 1)
        parts = self.parts_per_segment or max(
            1, round(self.segment_duration / self.part_duration + 0.4999)
        )
        return Grid(self.segment_duration, self.part_duration, parts)

    def encode(self) -> bytes:
        meta = asdict(self)
        del meta["init"]
        if self.version == FORMAT_V1:
            del meta["part_duration"], meta["parts_per_segment"]
        meta["format"] = FORMAT_NAME
        body = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
        return _HEADER_PREFIX.pack(HEADER_MAGIC, self.version, len(body)) + body + self.init

    @classmethod
    def decode(cls, block: bytes) -> StreamHeader:
        if len(block) < _HEADER_PREFIX.size:
            raise StreamFormatError("block 0 is too short to be a swarmcast stream header")
        magic, version, size = _HEADER_PREFIX.unpack_from(block)
        if magic != HEADER_MAGIC:
            raise StreamFormatError("block 0 is not a swarmcast stream header (is this a stream feed?)")
        if version not in READ_VERSIONS:
            raise StreamFormatError(f"stream format version {version} is not supported; upgrade swarmcast")
        start = _HEADER_PREFIX.size
        if start + size > len(block):
            raise StreamFormatError("stream header is truncated")
        try:
            meta = json.loads(block[start : start + size])
            fields = {
                k: meta[k]
                for k in cls.__dataclass_fields__
                if k not in ("init", "version") and k in meta
            }
            header = cls(**fields, init=bytes(block[start + size :]), version=version)
        except (ValueError, TypeError, KeyError) as exc:
            raise StreamFormatError(f"stream header metadata is malformed: {exc}") from None
        if not header.init:
            raise StreamFormatError("stream header carries no init segment")
        if version == FORMAT_V1:
            header.part_duration = header.parts_per_segment = None
        elif header.part_duration is not None and not 0 < header.part_duration <= header.segment_duration:
            raise StreamFormatError("stream header's part_duration is not within its segment")
        return header


class _Flagged:
    """The flags both a segment and its header answer by name."""

    __slots__ = ()
    flags: int

    @property
    def discontinuity(self) -> bool:
        """The first block after a broadcaster restart (the stream was resumed)."""
        return bool(self.flags & FLAG_DISCONTINUITY)

    @property
    def end(self) -> bool:
        """This block is the end marker (it carries no media)."""
        return bool(self.flags & FLAG_END)


@dataclass(frozen=True, slots=True)
class SegmentHeader(_Flagged):
    """The fixed header of a segment block, by name: enough to place it on the timeline and to
    tell a join point (an independent part) from a dependent one."""

    pts: float
    duration: float
    flags: int
    wall_clock: float
    back: int = 0  # blocks back to the independent part this one decodes from (0: itself)
    version: int = FORMAT_VERSION

    @property
    def independent(self) -> bool:
        """The block starts with a keyframe: playback can start (join, seek) here."""
        return bool(self.flags & FLAG_INDEPENDENT)

    @property
    def stop(self) -> float:
        """Stream time where this segment's media ends."""
        return self.pts + self.duration

    @classmethod
    def decode(cls, block: bytes) -> SegmentHeader:
        """Parse the fixed header at the start of a segment block (the media is not touched)."""
        if len(block) < _SEGMENT_PREFIX.size:
            raise StreamFormatError("block is too short to be a swarmcast segment")
        magic, version, flags, back, pts, duration, wall = _SEGMENT_PREFIX.unpack_from(block)
        if magic != SEGMENT_MAGIC or version not in READ_VERSIONS:
            raise StreamFormatError("block is not a swarmcast segment")
        if version == FORMAT_V1:
            back = 0  # reserved in v1; every v1 media block is a whole GOP
            flags = flags | FLAG_INDEPENDENT if not flags & FLAG_END else flags
        elif back and flags & (FLAG_INDEPENDENT | FLAG_END):
            raise StreamFormatError("an independent or end block cannot depend on an earlier one")
        return cls(pts, duration, flags, wall, back, version)


def is_independent(block: bytes) -> bool:
    """Whether a segment block (v1 or v2) is a join point, from its first 6 bytes only: the
    cheap test for a relay or scheduler that must not parse more. False for anything else."""
    if len(block) < 6 or block[:4] != SEGMENT_MAGIC:
        return False
    flags = block[5]
    if flags & FLAG_END:
        return False
    return block[4] == FORMAT_V1 or bool(flags & FLAG_INDEPENDENT)


@dataclass
class Segment(_Flagged):
    """One CMAF fragment with its timing; blocks 1.. of a stream feed. In v2 a part (one or more
    frames; `independent` when it starts with a keyframe, else `back` blocks after the part it
    decodes from), in v1 a whole keyframe-aligned GOP."""

    pts: float
    duration: float
    wall_clock: float
    data: bytes  # moof + mdat
    flags: int = 0
    independent: bool = True
    back: int = 0
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        flags = self.flags & ~FLAG_INDEPENDENT
        back = 0
        if self.version != FORMAT_V1 and not self.end:
            if self.independent:
                flags |= FLAG_INDEPENDENT
            else:
                back = self.back
                if not 1 <= back <= 0xFFFF:
                    raise ValueError("a dependent part needs back in 1..65535")
        prefix = _SEGMENT_PREFIX.pack(
            SEGMENT_MAGIC, self.version, flags, back, self.pts, self.duration, self.wall_clock
        )
        return prefix + self.data

    @classmethod
    def decode(cls, block: bytes) -> Segment:
        h = SegmentHeader.decode(block)
        data = bytes(block[_SEGMENT_PREFIX.size :])
        return cls(
            h.pts, h.duration, h.wall_clock, data, h.flags, h.independent, h.back, h.version
        )

    @staticmethod
    def decode_header(block: bytes) -> SegmentHeader:
        """Parse only the fixed header: cheap timing lookups for seeking."""
        return SegmentHeader.decode(block)


SEGMENT_HEADER_SIZE = _SEGMENT_PREFIX.size


def segment_media(block: bytes) -> bytes:
    """The fMP4 fragment (moof + mdat) of a segment block, without its fixed header."""
    return block[SEGMENT_HEADER_SIZE:]


class BlockReader(Protocol):
    """What feed_ended needs of a feed (streamer.core.feed.Feed is one)."""

    @property
    def length(self) -> int: ...

    def has(self, index: int) -> bool: ...

    def get(self, index: int) -> bytes: ...


def stream_ended(length: int, index: int, header: SegmentHeader | None) -> bool:
    """Whether a stream feed of `length` blocks has ended, given the header of its block `index`
    (None when not held or not a segment): it has when that block is its last and the end marker."""
    return header is not None and header.end and 1 <= index == length - 1


def feed_ended(feed: BlockReader) -> bool:
    """Whether the stream in `feed` has ended: its last block is held and is the end marker."""
    last = feed.length - 1
    if last < 1 or not feed.has(last):
        return False
    try:
        header = SegmentHeader.decode(feed.get(last))
    except StreamFormatError:
        return False
    return stream_ended(feed.length, last, header)


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """Where one media block lies on the stream timeline."""

    index: int
    pts: float
    duration: float
    flags: int
    known: bool  # False: its header was not read yet, so it is placed on the grid
    back: int = 0  # blocks back to the independent part it decodes from (0: it is one)

    @property
    def stop(self) -> float:
        return self.pts + self.duration

    @property
    def discontinuity(self) -> bool:
        return bool(self.flags & FLAG_DISCONTINUITY)

    @property
    def independent(self) -> bool:
        return bool(self.flags & FLAG_INDEPENDENT)


class Timeline:
    """Stream time to block and back, from the segment headers read so far: the one place that
    places blocks in time (the page's timeline, HLS segments and parts, export, where playback
    starts for a time).

    Media blocks run from block 1 to the end. An end marker that is not the last block (the
    stream was resumed after it) carries no media and is skipped; the block after it is
    independent and continues the timeline where the marker says. A block whose header was not
    read is placed on the grid (Grid: segments cut into parts) after the nearest known block
    before it. In a v2 stream a block is a part; only independent parts (FLAG_INDEPENDENT) are
    join and seek points, and a dependent part's header says how far back its independent part
    is (`back`), so finding where to start for a time t costs a few header reads: a grid guess,
    jumps by the parts' durations, then one step back to the independent part (join_point).
    """

    def __init__(self) -> None:
        self._headers: dict[int, SegmentHeader] = {}
        self._ends: set[int] = set()  # indexes of the end markers added

    def __contains__(self, index: object) -> bool:
        return index in self._headers

    def get(self, index: int) -> SegmentHeader | None:
        """The header of block `index` if it was added."""
        return self._headers.get(index)

    def add(self, index: int, header: SegmentHeader) -> SegmentHeader:
        self._headers[index] = header
        if header.end:
            self._ends.add(index)
        else:
            self._ends.discard(index)
        return header

    def add_block(self, index: int, block: bytes) -> SegmentHeader:
        """Parse block `index`'s fixed header and remember it (StreamFormatError if it is none)."""
        return self.add(index, SegmentHeader.decode(block))

    def entries(self, length: int, grid: Grid | float, first: int = 1) -> list[TimelineEntry]:
        """Blocks `first`.. of a feed of `length` blocks up to the newest media block, unknown
        ones placed on `grid` (a Grid, or a segment duration for one block per segment). With
        `first` > 1 the work starts at the nearest block before it whose header is known."""
        g = Grid.of(grid)
        rows: list[TimelineEntry] = []
        next_pts = 0.0
        position = 0  # the next block's position within its segment, on the grid
        start = 1
        if first > 1:
            start = first - 1
            while start > 1 and start not in self._headers:
                start -= 1
            if length - 1 in self._ends and length - 1 < start:
                return []  # media ended before `first`
        for index in range(start, length):
            known = self._headers.get(index)
            if known is not None:
                if known.end:
                    # Skipped: the stream ended here, or stopped and was resumed after it.
                    next_pts, position = known.pts, 0
                    continue
                rows.append(
                    TimelineEntry(index, known.pts, known.duration, known.flags, True, known.back)
                )
                next_pts = known.stop
                position = known.back + 1
                if position >= g.parts:
                    position = 0
            else:
                duration = g.part_duration(position)
                flags = FLAG_INDEPENDENT if position == 0 else 0
                rows.append(TimelineEntry(index, next_pts, duration, flags, False, position))
                next_pts += duration
                position = position + 1 if position + 1 < g.parts else 0
        return [row for row in rows if row.index >= first] if first > start else rows

    def known_entries(self) -> dict[int, TimelineEntry]:
        """The media blocks whose header is known (end markers skipped), by index."""
        known: dict[int, TimelineEntry] = {}
        for index in sorted(self._headers):
            h = self._headers[index]
            if not h.end:
                known[index] = TimelineEntry(index, h.pts, h.duration, h.flags, True, h.back)
        return known

    def origin(self) -> float:
        """Stream time of the stream's start: block 1's pts when known, else 0."""
        first = self._headers.get(1)
        return first.pts if first is not None and not first.end else 0.0

    def overlapping(self, start: float, stop: float) -> list[TimelineEntry]:
        """Known media blocks, in order, whose media overlaps stream time [start, stop)."""
        return [e for e in self.known_entries().values() if e.stop > start and e.pts < stop]

    def run_from(self, first: int, before: float) -> int:
        """The last block of the run of known media blocks from `first` on, without a missing
        one between (a resume's end marker is no gap), that start before stream time `before`."""
        known = self.known_entries()
        last = index = first
        while True:
            index += 1
            if index in self._ends:
                continue
            if index not in known or known[index].pts >= before:
                return last
            last = index

    def join_point(self, index: int) -> int:
        """The independent block that block `index` (header added) decodes from: itself, or the
        part `back` blocks before it. Playback of `index` starts by appending that one."""
        header = self._headers[index]
        return max(1, index - header.back)

    @staticmethod
    def grid_index(t: float, length: int, grid: Grid | float) -> int:
        """The block the grid puts stream time `t` in, within blocks 1..length-1; a first
        guess, refined with seek_step as headers arrive."""
        return min(max(1, Grid.of(grid).index_at(t)), length - 1)

    def seek_step(self, index: int, t: float, length: int) -> int:
        """Given block `index`'s header (added), the block to look at next for stream time `t`:
        `index` itself once it is the media block covering `t` (or no better one exists).
        Jumps by as many blocks as the header's duration suggests, never past a block already
        known to lie before or after `t` (halving that bracket when a jump would leave it), so
        the search ends in a few reads."""
        header = self._headers[index]
        lo, hi = 1, length - 1
        for i, h in self._headers.items():
            if h.end and i >= length - 1:
                hi = min(hi, i - 1)  # the final end marker: the answer lies before it
            elif h.stop <= t:
                lo = max(lo, min(i + 1, length - 1))  # ... after block i (or a resume's marker)
            elif h.pts > t and i > 1:
                hi = min(hi, i - 1)  # ... or before it
        size = header.duration if header.duration > 0 else 0.0
        if header.end and index < length - 1 and t >= header.pts:
            target = index + 1  # a resume's marker: the media goes on after it
        elif header.end or (t < header.pts and index > 1):
            jump = 1 if header.end or not size else max(1, int((header.pts - t) // size) + 1)
            target = index - jump
        elif t >= header.stop and index < length - 1:
            jump = max(1, int((t - header.stop) // size) + 1) if size else 1
            target = index + jump
        else:
            return index
        if not lo <= target <= hi:
            # The jump overshot what is known (a gap in the timeline): halve the bracket instead.
            target = (lo + hi + (1 if target > hi else 0)) // 2
        return min(max(target, lo), hi)

    def newest_media(self, length: int) -> int:
        """The newest media block of a feed of `length` blocks, given its last block's header
        (added): the last block, or the one before it when the last is the end marker."""
        last = length - 1
        header = self._headers[last]
        return last - 1 if header.end and last > 1 else last
