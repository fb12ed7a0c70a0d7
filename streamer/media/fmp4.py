"""Read the timing of fMP4 fragments (moof + mdat) without decoding: per track, the base media
decode time (tfdt), the number of samples, their total duration and whether the first sample is
a sync sample (a keyframe). Pure Python (no PyAV), so the encoder, a passthrough cutter and
tests can ask "where does this fragment lie and can a decoder start here?".

Only the boxes a CMAF fragment needs are parsed (moof > mfhd, traf > tfhd, tfdt, trun); anything
malformed raises ValueError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from streamer.core.compat import SLOTS

# Sample flags (ISO/IEC 14496-12 8.8.3.1): sample_is_non_sync_sample is bit 16; a sync sample
# also has sample_depends_on == 2 (bits 24-25) when the muxer writes it.
_NON_SYNC = 0x00010000


@dataclass(frozen=True, **SLOTS)
class TrackRun:
    """One track's samples in one fragment."""

    track_id: int
    base_time: int  # tfdt, in the track's timescale
    samples: int
    duration: int  # sum of the sample durations, in the track's timescale
    first_sync: bool  # the first sample is a sync sample (a decoder can start here)


def boxes(data: bytes | memoryview, start: int = 0, end: int | None = None):
    """Yield (type, payload start, box end) for each box in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        if end - pos < 8:
            raise ValueError("truncated MP4 box header")
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        head = 8
        if size == 1:
            if end - pos < 16:
                raise ValueError("truncated MP4 box header")
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
            head = 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            raise ValueError(f"MP4 box {kind!r} overruns its container")
        yield kind, pos + head, pos + size
        pos += size


def fragment_runs(fragment: bytes | memoryview) -> list[TrackRun]:
    """The track runs of every moof in `fragment` (one or more moof + mdat pairs), merged per
    track in order of first appearance."""
    merged: dict[int, TrackRun] = {}
    for kind, start, end in boxes(fragment):
        if kind != b"moof":
            continue
        for sub, s, e in boxes(fragment, start, end):
            if sub == b"traf":
                run = _traf(fragment, s, e)
                prev = merged.get(run.track_id)
                if prev is None:
                    merged[run.track_id] = run
                else:
                    merged[run.track_id] = TrackRun(
                        run.track_id,
                        prev.base_time,
                        prev.samples + run.samples,
                        prev.duration + run.duration,
                        prev.first_sync,
                    )
    return list(merged.values())


def _traf(data: bytes | memoryview, start: int, end: int) -> TrackRun:
    track_id = 0
    default_duration = 0
    default_flags = 0
    base_time = 0
    samples = 0
    duration = 0
    first_sync: bool | None = None
    for kind, s, e in boxes(data, start, end):
        if kind == b"tfhd":
            flags = int.from_bytes(data[s + 1 : s + 4], "big")
            track_id = int.from_bytes(data[s + 4 : s + 8], "big")
            pos = s + 8
            if flags & 0x01:
                pos += 8  # base data offset
            if flags & 0x02:
                pos += 4  # sample description index
            if flags & 0x08:
                default_duration = int.from_bytes(data[pos : pos + 4], "big")
                pos += 4
            if flags & 0x10:
                pos += 4  # default sample size
            if flags & 0x20:
                default_flags = int.from_bytes(data[pos : pos + 4], "big")
                pos += 4
            if pos > e:
                raise ValueError("truncated tfhd")
        elif kind == b"tfdt":
            version = data[s]
            if version == 1:
                base_time = struct.unpack_from(">Q", data, s + 4)[0]
            else:
                base_time = struct.unpack_from(">I", data, s + 4)[0]
        elif kind == b"trun":
            flags = int.from_bytes(data[s + 1 : s + 4], "big")
            count = int.from_bytes(data[s + 4 : s + 8], "big")
            pos = s + 8
            if flags & 0x01:
                pos += 4  # data offset
            first_flags = None
            if flags & 0x04:
                first_flags = int.from_bytes(data[pos : pos + 4], "big")
                pos += 4
            per = 4 * bin(flags & 0xF00).count("1")
            if pos + per * count > e:
                raise ValueError("truncated trun")
            for i in range(count):
                p = pos
                d = default_duration
                if flags & 0x100:
                    d = int.from_bytes(data[p : p + 4], "big")
                    p += 4
                if flags & 0x200:
                    p += 4
                sample_flags = default_flags
                if flags & 0x400:
                    sample_flags = int.from_bytes(data[p : p + 4], "big")
                if i == 0 and first_sync is None:
                    if first_flags is not None:
                        sample_flags = first_flags
                    first_sync = not sample_flags & _NON_SYNC
                duration += d
                pos += per
            samples += count
    return TrackRun(track_id, base_time, samples, duration, bool(first_sync))
