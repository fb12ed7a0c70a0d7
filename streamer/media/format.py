"""The stream format inside a feed: block 0 is the stream header, every later block one segment.

Pure Python (no PyAV), so the viewer, the HLS server and tests can parse blocks cheaply. It must
never accept a block it cannot fully parse: a bad block raises StreamFormatError.

Block 0 (stream header):   b"SWCH" | u8 version | u32le json_len | JSON (utf-8) | fMP4 init (ftyp+moov)
Block i >= 1 (segment):    b"SWCS" | u8 version | u8 flags | u16le reserved
                           | f64le pts | f64le duration | f64le wall_clock | fMP4 fragment (moof+mdat)
pts and duration are seconds on the stream timeline (monotonic across broadcaster restarts);
wall_clock is the Unix time when the block was appended.

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
FORMAT_VERSION = 1

HEADER_MAGIC = b"SWCH"
SEGMENT_MAGIC = b"SWCS"

FLAG_DISCONTINUITY = 1  # first segment after a broadcaster restart
FLAG_END = 2  # the stream ended cleanly here; this block carries no media

_HEADER_PREFIX = struct.Struct("<4sBI")
_SEGMENT_PREFIX = struct.Struct("<4sBBHddd")



@dataclass
class StreamHeader:
    """What a viewer needs to play the stream; block 0 of every stream feed."""

    title: str
    start_time: float  # Unix time the stream started
    mime: str  # MSE type, e.g. 'video/mp4; codecs="avc1.64001f,mp4a.40.2"'
    width: int
    height: int
    fps: float
    segment_duration: float  # target seconds per block
    video_codec: str = "h264"
    audio_codec: str | None = "aac"
    sample_rate: int | None = None
    channels: int | None = None
    init: bytes = b""  # fMP4 init segment (ftyp + moov)
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        meta = asdict(self)
        del meta["init"]
        meta["format"] = FORMAT_NAME
        meta["version"] = FORMAT_VERSION
        body = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
        return _HEADER_PREFIX.pack(HEADER_MAGIC, FORMAT_VERSION, len(body)) + body + self.init

    @classmethod
    def decode(cls, block: bytes) -> StreamHeader:
        if len(block) < _HEADER_PREFIX.size:
            raise StreamFormatError("block 0 is too short to be a swarmcast stream header")
        magic, version, size = _HEADER_PREFIX.unpack_from(block)
        if magic != HEADER_MAGIC:
            raise StreamFormatError("block 0 is not a swarmcast stream header (is this a stream feed?)")
        if version != FORMAT_VERSION:
            raise StreamFormatError(f"stream format version {version} is not supported; upgrade swarmcast")
        start = _HEADER_PREFIX.size
        if start + size > len(block):
            raise StreamFormatError("stream header is truncated")
        try:
            meta = json.loads(block[start : start + size])
            fields = {k: meta[k] for k in cls.__dataclass_fields__ if k != "init" and k in meta}
            header = cls(**fields, init=bytes(block[start + size :]))
        except (ValueError, TypeError, KeyError) as exc:
            raise StreamFormatError(f"stream header metadata is malformed: {exc}") from None
        if not header.init:
            raise StreamFormatError("stream header carries no init segment")
        return header


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """The fixed header of a segment block, by name: enough to place it on the timeline."""

    pts: float
    duration: float
    flags: int
    wall_clock: float

    @property
    def discontinuity(self) -> bool:
        return bool(self.flags & FLAG_DISCONTINUITY)

    @property
    def end(self) -> bool:
        """This block is the end marker (it carries no media)."""
        return bool(self.flags & FLAG_END)

    @property
    def stop(self) -> float:
        """Stream time where this segment's media ends."""
        return self.pts + self.duration

    @classmethod
    def decode(cls, block: bytes) -> SegmentHeader:
        """Parse the fixed header at the start of a segment block (the media is not touched)."""
        if len(block) < _SEGMENT_PREFIX.size:
            raise StreamFormatError("block is too short to be a swarmcast segment")
        magic, version, flags, _, pts, duration, wall = _SEGMENT_PREFIX.unpack_from(block)
        if magic != SEGMENT_MAGIC or version != FORMAT_VERSION:
            raise StreamFormatError("block is not a swarmcast segment")
        return cls(pts, duration, flags, wall)


@dataclass
class Segment:
    """One keyframe-aligned CMAF fragment with its timing; blocks 1.. of a stream feed."""

    pts: float
    duration: float
    wall_clock: float
    data: bytes  # moof + mdat
    flags: int = 0

    @property
    def discontinuity(self) -> bool:
        return bool(self.flags & FLAG_DISCONTINUITY)

    @property
    def end(self) -> bool:
        return bool(self.flags & FLAG_END)

    def encode(self) -> bytes:
        prefix = _SEGMENT_PREFIX.pack(
            SEGMENT_MAGIC, FORMAT_VERSION, self.flags, 0, self.pts, self.duration, self.wall_clock
        )
        return prefix + self.data

    @classmethod
    def decode(cls, block: bytes) -> Segment:
        h = SegmentHeader.decode(block)
        return cls(h.pts, h.duration, h.wall_clock, bytes(block[_SEGMENT_PREFIX.size :]), h.flags)

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
    known: bool  # False: its header was not read yet, so it is placed on the segment grid

    @property
    def stop(self) -> float:
        return self.pts + self.duration

    @property
    def discontinuity(self) -> bool:
        return bool(self.flags & FLAG_DISCONTINUITY)


class Timeline:
    """Stream time to block and back, from the segment headers read so far: the one place that
    places blocks in time (the page's timeline, HLS, export, where playback starts for a time).

    Media blocks run from block 1 up to the first end marker known. A block whose header was not
    read is placed on the segment grid after the nearest known block before it (block i covers
    about [(i-1)*D, i*D)). Today every block is one independent, keyframe-aligned segment; blocks
    that are parts of a segment would change this class and TimelineEntry, not their users.
    """

    def __init__(self) -> None:
        self._headers: dict[int, SegmentHeader] = {}

    def __contains__(self, index: object) -> bool:
        return index in self._headers

    def get(self, index: int) -> SegmentHeader | None:
        """The header of block `index` if it was added."""
        return self._headers.get(index)

    def add(self, index: int, header: SegmentHeader) -> SegmentHeader:
        self._headers[index] = header
        return header

    def add_block(self, index: int, block: bytes) -> SegmentHeader:
        """Parse block `index`'s fixed header and remember it (StreamFormatError if it is none)."""
        return self.add(index, SegmentHeader.decode(block))

    def entries(self, length: int, segment_duration: float) -> list[TimelineEntry]:
        """Blocks 1.. of a feed of `length` blocks up to the newest media block, unknown ones
        placed on the grid of `segment_duration` seconds."""
        rows: list[TimelineEntry] = []
        next_pts = 0.0
        for index in range(1, length):
            known = self._headers.get(index)
            if known is not None:
                if known.end:
                    break
                rows.append(TimelineEntry(index, known.pts, known.duration, known.flags, True))
                next_pts = known.stop
            else:
                rows.append(TimelineEntry(index, next_pts, segment_duration, 0, False))
                next_pts += segment_duration
        return rows

    def known_entries(self) -> dict[int, TimelineEntry]:
        """The media blocks whose header is known (before the first known end marker), by index."""
        known: dict[int, TimelineEntry] = {}
        for index in sorted(self._headers):
            h = self._headers[index]
            if h.end:
                break
            known[index] = TimelineEntry(index, h.pts, h.duration, h.flags, True)
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
        one between, that start before stream time `before`."""
        known = self.known_entries()
        last = first
        while last + 1 in known and known[last + 1].pts < before:
            last += 1
        return last

    @staticmethod
    def grid_index(t: float, length: int, segment_duration: float) -> int:
        """The block the segment grid puts stream time `t` in, within blocks 1..length-1; a first
        guess, refined with seek_step as headers arrive."""
        return min(max(1, 1 + int(t // segment_duration)), length - 1)

    def seek_step(self, index: int, t: float, length: int) -> int:
        """Given block `index`'s header (added), the block to look at next for stream time `t`:
        `index` itself once it is the media block covering `t` (or no better one exists)."""
        header = self._headers[index]
        if header.end or (t < header.pts and index > 1):
            return index - 1
        if t >= header.stop and index < length - 1:
            return index + 1
        return index

    def newest_media(self, length: int) -> int:
        """The newest media block of a feed of `length` blocks, given its last block's header
        (added): the last block, or the one before it when the last is the end marker."""
        last = length - 1
        header = self._headers[last]
        return last - 1 if header.end and last > 1 else last
