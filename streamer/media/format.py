"""The stream format inside a feed: block 0 is the stream header, every later block one segment.

Pure Python (no PyAV), so the viewer, the HLS server and tests can parse blocks cheaply. It must
never accept a block it cannot fully parse: a bad block raises StreamFormatError.

Block 0 (stream header):   b"SWCH" | u8 version | u32le json_len | JSON (utf-8) | fMP4 init (ftyp+moov)
Block i >= 1 (segment):    b"SWCS" | u8 version | u8 flags | u16le reserved
                           | f64le pts | f64le duration | f64le wall_clock | fMP4 fragment (moof+mdat)
pts and duration are seconds on the stream timeline (monotonic across broadcaster restarts);
wall_clock is the Unix time when the block was appended.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

from streamer.core.errors import SwarmcastError

FORMAT_NAME = "swarmcast"
FORMAT_VERSION = 1

HEADER_MAGIC = b"SWCH"
SEGMENT_MAGIC = b"SWCS"

FLAG_DISCONTINUITY = 1  # first segment after a broadcaster restart
FLAG_END = 2  # the stream ended cleanly here; this block carries no media

_HEADER_PREFIX = struct.Struct("<4sBI")
_SEGMENT_PREFIX = struct.Struct("<4sBBHddd")


class StreamFormatError(SwarmcastError):
    """A block is not a valid swarmcast stream header or segment."""


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
        if len(block) < _SEGMENT_PREFIX.size:
            raise StreamFormatError("block is too short to be a swarmcast segment")
        magic, version, flags, _, pts, duration, wall = _SEGMENT_PREFIX.unpack_from(block)
        if magic != SEGMENT_MAGIC or version != FORMAT_VERSION:
            raise StreamFormatError("block is not a swarmcast segment")
        return cls(pts, duration, wall, bytes(block[_SEGMENT_PREFIX.size :]), flags)

    @classmethod
    def decode_header(cls, block: bytes) -> Segment:
        """Parse only the fixed header (data left empty): cheap timing lookups for seeking."""
        return cls.decode(bytes(block[: _SEGMENT_PREFIX.size]))


SEGMENT_HEADER_SIZE = _SEGMENT_PREFIX.size
