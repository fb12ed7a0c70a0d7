"""Export a stream feed on disk to a plain MP4: the init segment plus a contiguous run of blocks,
remuxed with PyAV (no re-encode), moov in front (faststart) so any player opens it.

It never re-encodes, never leaves a half-written OUT (it writes a temp file beside OUT and
renames it only when complete) and must not run on an event loop: use export_feed_async there.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av

from streamer.core.backfill import describe_runs, to_runs
from streamer.core.errors import BlockNotFoundError, ExportError, StreamFormatError
from streamer.core.feed import Feed
from streamer.media.format import StreamHeader, Timeline, segment_media


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: blocks first..last (inclusive) covering `duration` seconds."""

    out: Path
    first_block: int
    last_block: int
    start: float  # stream time of the first exported block, seconds from the stream start
    duration: float
    partial: bool  # True when a missing block cut the export short of what was asked
    note: str  # one line for the user when partial, else ""


class _ConcatReader:
    """A read()-only file over init + blocks, so PyAV demuxes the run without a copy on disk."""

    def __init__(self, init: bytes, chunks: Iterator[bytes]) -> None:
        self._buffer = memoryview(init)
        self._chunks = chunks

    def read(self, size: int = -1) -> bytes:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._buffer = memoryview(chunk)
        n = len(self._buffer) if size < 0 else min(size, len(self._buffer))
        out = bytes(self._buffer[:n])
        self._buffer = self._buffer[n:]
        return out


@dataclass(frozen=True)
class _Plan:
    first: int
    last: int
    start: float
    duration: float
    partial: bool
    note: str


def _plan(
    length: int,
    has: Callable[[int], bool],
    read: Callable[[int], bytes],
    start_s: float | None,
    end_s: float | None,
) -> _Plan:
    """Choose the contiguous run of held media blocks covering [start_s, end_s]."""
    held = [i for i in range(1, length) if has(i)]
    timeline = Timeline()
    for index in held:
        timeline.add_block(index, read(index))  # end markers too: the timeline skips them
    timing = timeline.known_entries()
    if not timing:
        raise ExportError("the archive holds no media blocks yet; nothing to export")
    origin = timeline.origin()
    want_from = origin + (start_s or 0.0)
    want_to = origin + end_s if end_s is not None else float("inf")
    wanted = [e.index for e in timeline.overlapping(want_from, want_to)]
    if not wanted:
        raise ExportError(
            f"no held block covers --from {start_s or 0:g} --to {end_s if end_s is not None else 'end'}; "
            "the stream is shorter than that"
        )
    # Decoding starts at an independent part (a keyframe): the one the first wanted part needs,
    # or, when that one is not held, the next held one.
    first = timeline.join_point(wanted[0])
    if first not in timing:
        starts = [i for i in wanted if timing[i].independent]
        if not starts:
            raise ExportError(
                "the archive holds no keyframe part in that range; run `viewer archive` to fetch "
                "the rest"
            )
        first = starts[0]
    last = timeline.run_from(first, want_to)
    asked_last = max(wanted) if end_s is not None else max(timing)
    note = ""
    partial = last < asked_last or (wanted[0] > 1 and start_s is None)
    if partial:
        # Name the blocks that cut it short: before the run (when the whole stream was asked for)
        # and between the run and the last block asked for.
        lo = 1 if start_s is None else first
        gaps = [i for i in range(lo, asked_last + 1) if not first <= i <= last and not has(i)]
        runs = to_runs(gaps)
        verb = "is" if len(gaps) == 1 else "are"
        note = (
            f"the archive is partial: {describe_runs(runs)} {verb} missing, so only blocks "
            f"{first}..{last} were exported; run `viewer archive` to fetch the rest"
        )
    duration = timing[last].stop - timing[first].pts
    return _Plan(first, last, timing[first].pts - origin, duration, partial, note)


def _remux(init: bytes, blocks: Iterator[bytes], tmp_path: str) -> None:
    source = av.open(_ConcatReader(init, blocks), "r", format="mp4")
    try:
        sink = av.open(
            tmp_path,
            "w",
            format="mp4",
            options={"movflags": "faststart", "avoid_negative_ts": "make_zero"},
        )
        try:
            mapping = {s.index: sink.add_stream_from_template(s) for s in source.streams}
            last_dts: dict[int, int] = {}
            for packet in source.demux():
                if packet.dts is None:  # the demuxer's empty flush packets
                    continue
                index = packet.stream.index
                if index in last_dts and packet.dts <= last_dts[index]:
                    # Where a stream was resumed, the first run's last audio frame can reach a
                    # few ms past the point the next run starts at: keep the earlier frame.
                    continue
                last_dts[index] = packet.dts
                packet.stream = mapping[index]
                sink.mux(packet)
        finally:
            sink.close()
    finally:
        source.close()


def export_feed(
    directory: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    start: float | None = None,
    end: float | None = None,
) -> ExportResult:
    """Remux the stream feed in `directory` to `out` (seconds `start`..`end` from stream start)."""
    if start is not None and start < 0 or end is not None and end <= (start or 0.0):
        raise ExportError("--from must be >= 0 and --to greater than --from")
    out_path = Path(out)
    parent = out_path.parent if str(out_path.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(f"cannot write {out_path}: directory {parent} does not exist")
    if out_path.is_dir():
        raise ExportError(f"cannot write {out_path}: it is a directory; give a file name")
    with Feed.open(directory) as feed:
        if feed.length < 1 or not feed.has(0):
            raise ExportError(f"{directory} holds no stream header yet; nothing to export")
        try:
            header = StreamHeader.decode(feed.get(0))
            plan = _plan(feed.length, feed.has, feed.get, start, end)
        except StreamFormatError as exc:
            raise ExportError(f"{directory} is not a swarmcast stream feed: {exc}") from None
        except BlockNotFoundError as exc:
            raise ExportError(f"{directory} changed while exporting: {exc}") from None

        def media() -> Iterator[bytes]:
            for index in range(plan.first, plan.last + 1):
                yield segment_media(feed.get(index))

        try:
            fd, tmp_path = tempfile.mkstemp(dir=parent, prefix=f".{out_path.name}.", suffix=".part")
        except OSError as exc:
            raise ExportError(f"cannot write {out_path}: {exc.strerror}") from None
        os.close(fd)
        try:
            _remux(header.init, media(), tmp_path)
            os.replace(tmp_path, out_path)
        except OSError as exc:
            raise ExportError(f"cannot write {out_path}: {exc.strerror or exc}") from None
        except av.error.FFmpegError as exc:
            raise ExportError(f"cannot export to {out_path}: {exc}") from None
        finally:
            if os.path.exists(tmp_path):
                os.unlink(tmp_path)
    return ExportResult(
        out_path, plan.first, plan.last, plan.start, plan.duration, plan.partial, plan.note
    )


async def export_feed_async(
    directory: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    start: float | None = None,
    end: float | None = None,
) -> ExportResult:
    """export_feed in a worker thread, for callers on an event loop."""
    return await asyncio.to_thread(export_feed, directory, out, start=start, end=end)
