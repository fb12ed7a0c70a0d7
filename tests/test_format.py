"""Unit tests of streamer.media.format's answers: segment headers by name, when a stream has
ended, and the Timeline that maps stream time to blocks and back."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.core.errors import StreamFormatError
from streamer.core.feed import Feed
from streamer.media.format import (
    FLAG_DISCONTINUITY,
    FLAG_END,
    FLAG_INDEPENDENT,
    SEGMENT_HEADER_SIZE,
    Grid,
    Segment,
    SegmentHeader,
    Timeline,
    feed_ended,
    segment_media,
    stream_ended,
)


def seg(pts: float, duration: float = 1.0, flags: int = 0, data: bytes = b"media") -> bytes:
    return Segment(pts, duration, 1700000000.0 + pts, data, flags).encode()


def end(pts: float) -> bytes:
    return seg(pts, 0.0, FLAG_END, b"")


def test_segment_header_has_named_fields() -> None:
    block = seg(2.5, 1.25, FLAG_DISCONTINUITY, b"moofmdat")
    header = SegmentHeader.decode(block)
    assert (header.pts, header.duration) == (2.5, 1.25)
    assert header.flags == FLAG_DISCONTINUITY | FLAG_INDEPENDENT and header.independent
    assert header.wall_clock == 1700000002.5
    assert header.discontinuity and not header.end and header.stop == 3.75
    assert Segment.decode_header(block) == header
    assert segment_media(block) == b"moofmdat" == Segment.decode(block).data
    assert len(block) == SEGMENT_HEADER_SIZE + len(b"moofmdat")
    assert SegmentHeader.decode(end(3.0)).end
    with pytest.raises(StreamFormatError):
        SegmentHeader.decode(b"SWCS")
    with pytest.raises(StreamFormatError):
        SegmentHeader.decode(b"XXXX" + block[4:])


def test_a_stream_has_ended_when_its_last_block_is_the_end_marker() -> None:
    marker = SegmentHeader.decode(end(3.0))
    media = SegmentHeader.decode(seg(2.0))
    assert stream_ended(4, 3, marker)
    assert not stream_ended(5, 3, marker)  # a resumed stream went on after it
    assert not stream_ended(4, 3, media)
    assert not stream_ended(4, 3, None)
    assert not stream_ended(1, 0, marker)  # block 0 is the stream header


def test_feed_ended_reads_the_last_block(tmp_path: Path) -> None:
    with Feed.create(tmp_path / "feed") as feed:
        assert not feed_ended(feed)
        feed.append([b"header"])
        assert not feed_ended(feed)
        feed.append([seg(0.0), b"not a segment"])
        assert not feed_ended(feed)
        feed.append([seg(1.0), end(2.0)])
        assert feed_ended(feed)
        feed.append([seg(2.0, flags=FLAG_DISCONTINUITY)])
        assert not feed_ended(feed)


def test_timeline_places_unknown_blocks_on_the_grid_and_stops_at_the_end() -> None:
    timeline = Timeline()
    timeline.add_block(1, seg(10.0, 2.0))
    timeline.add_block(3, seg(13.0, 1.5, FLAG_DISCONTINUITY))
    rows = timeline.entries(6, 2.0)
    assert [(e.index, e.pts, e.duration, e.known) for e in rows] == [
        (1, 10.0, 2.0, True),
        (2, 12.0, 2.0, False),  # after the nearest known block before it
        (3, 13.0, 1.5, True),
        (4, 14.5, 2.0, False),
        (5, 16.5, 2.0, False),
    ]
    assert rows[2].discontinuity and rows[2].stop == 14.5
    timeline.add_block(5, end(16.5))
    assert [e.index for e in timeline.entries(6, 2.0)] == [1, 2, 3, 4]
    assert list(timeline.known_entries()) == [1, 3]
    assert 3 in timeline and 2 not in timeline and timeline.get(2) is None


def test_timeline_maps_time_to_the_held_blocks_for_export() -> None:
    timeline = Timeline()
    assert timeline.origin() == 0.0
    for index in (1, 2, 3, 5, 6):
        timeline.add_block(index, seg(100.0 + index - 1))
    timeline.add_block(7, end(106.0))
    timeline.add_block(8, seg(106.0, flags=FLAG_DISCONTINUITY))  # resumed after the marker
    assert timeline.origin() == 100.0
    assert [e.index for e in timeline.overlapping(101.5, 104.5)] == [2, 3, 5]
    assert [e.index for e in timeline.overlapping(105.5, 107.0)] == [6, 8]
    assert list(timeline.known_entries()) == [1, 2, 3, 5, 6, 8]
    assert timeline.run_from(2, 104.5) == 3  # block 4 is missing
    assert timeline.run_from(5, float("inf")) == 8  # on past the resume's end marker (7)
    assert timeline.run_from(5, 106.0) == 6
    assert timeline.run_from(1, 101.0) == 1


def test_seeking_starts_on_the_grid_and_settles_on_the_covering_block() -> None:
    length = 10
    assert Timeline.grid_index(0.0, length, 2.0) == 1
    assert Timeline.grid_index(5.0, length, 2.0) == 3
    assert Timeline.grid_index(500.0, length, 2.0) == 9
    timeline = Timeline()
    # A restart left a gap on the timeline: block i covers [2i, 2i + 2) instead of the grid's.
    for index in range(1, length):
        timeline.add_block(index, seg(2.0 * index, 2.0))
    index = Timeline.grid_index(9.0, length, 2.0)
    while (step := timeline.seek_step(index, 9.0, length)) != index:
        index = step
    assert index == 4
    assert timeline.seek_step(1, 0.5, length) == 1  # before the first block: the first
    assert timeline.seek_step(9, 50.0, length) == 9  # past the newest: the newest
    timeline.add_block(9, end(18.0))
    assert timeline.seek_step(9, 18.0, length) == 8  # never the end marker
    assert timeline.newest_media(length) == 8
    timeline.add_block(9, seg(18.0))
    assert timeline.newest_media(length) == 9


def test_a_resumed_stream_goes_on_past_the_end_marker_in_its_middle() -> None:
    # Blocks 1-3, a clean stop (4), a resume (5, 6), then the final stop (7); length 8.
    timeline = Timeline()
    for index, block in (
        (1, seg(0.0)), (3, seg(2.0)), (4, end(3.0)), (5, seg(3.0, flags=FLAG_DISCONTINUITY)),
        (7, end(5.0)),
    ):
        timeline.add_block(index, block)
    rows = timeline.entries(8, 1.0)
    assert [(e.index, e.pts, e.known) for e in rows] == [
        (1, 0.0, True), (2, 1.0, False), (3, 2.0, True), (5, 3.0, True), (6, 4.0, False)
    ]
    assert rows[3].discontinuity and rows[3].independent
    assert timeline.entries(8, 1.0, 5) == rows[3:]
    assert timeline.entries(8, 1.0, 7) == []
    assert list(timeline.known_entries()) == [1, 3, 5]
    # Seeking to a time after the resume settles past the marker, from either side of it.
    timeline.add_block(2, seg(1.0))
    timeline.add_block(6, seg(4.0))
    for start in (2, 4, 7):
        index = start
        for _ in range(8):
            if (step := timeline.seek_step(index, 4.5, 8)) == index:
                break
            index = step
        assert index == 6, start
    assert timeline.seek_step(4, 3.0, 8) == 5  # the marker's own time: the resume's first block
    # Without the resume's blocks known yet, the unknown block after a marker starts a segment.
    lone = Timeline()
    lone.add_block(2, end(2.0))
    assert [(e.index, e.pts, e.independent) for e in lone.entries(5, Grid(1.0, 0.5, 2))] == [
        (1, 0.0, True), (3, 2.0, True), (4, 2.5, False)
    ]


def test_entries_from_a_later_block_match_the_whole_list() -> None:
    timeline = Timeline()
    for index in (1, 2, 5, 9):
        timeline.add_block(index, seg(10.0 + index - 1))
    whole = timeline.entries(12, 1.0)
    for first in range(1, 13):
        assert timeline.entries(12, 1.0, first) == whole[first - 1 :]
    timeline.add_block(6, end(15.0))  # stopped and resumed: block 6 is no media
    resumed = timeline.entries(12, 1.0)
    assert [e.index for e in resumed] == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    for first in range(1, 13):
        assert timeline.entries(12, 1.0, first) == [e for e in resumed if e.index >= first]
    timeline.add_block(11, end(20.0))  # the final stop: media ends before block 11
    assert timeline.entries(12, 1.0, 11) == [] and timeline.entries(12, 1.0, 12) == []
    assert timeline.entries(12, 1.0, 3) == timeline.entries(12, 1.0)[2:]
