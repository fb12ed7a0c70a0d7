"""The Broadcaster on a real feed: header + segments + end marker, resuming a stream, stats
providers, clean stop; blocks decoded back with PyAV."""

from __future__ import annotations

import asyncio
import json
import threading
from fractions import Fraction
from pathlib import Path

import pytest

from streamer.broadcast import (
    Broadcaster,
    BroadcastOptions,
    BroadcastState,
    plan_settings,
    resume_point,
)
from streamer.core.errors import MediaError, UsageError
from streamer.core.feed import Feed, FeedEvent
from streamer.media.encoder import EncoderSettings
from streamer.media.format import (
    FLAG_DISCONTINUITY,
    FLAG_END,
    FLAG_INDEPENDENT,
    Segment,
    StreamHeader,
)
from streamer.media.sources import FileSource, TestPatternSource
from tests.fixtures_media import av_offsets, decode

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "sample.mp4"
SMALL = EncoderSettings(160, 96, Fraction(30), 300_000, 1.0, "ultrafast")


def _blocks(feed: Feed) -> tuple[StreamHeader, list[Segment]]:
    return StreamHeader.decode(feed.get(0)), [
        Segment.decode(feed.get(i)) for i in range(1, feed.length)
    ]


async def _broadcast(feed: Feed, source, settings=SMALL, **kwargs) -> Broadcaster:
    broadcaster = Broadcaster(feed, source, settings, BroadcastOptions(fast=True, **kwargs))
    await broadcaster.run()
    return broadcaster


async def test_a_file_becomes_header_segments_and_an_end_marker(tmp_path: Path) -> None:
    appended: list[int] = []
    with Feed.create(tmp_path / "feed") as feed:
        feed.add_listener(lambda event: appended.append(event.length))
        broadcaster = Broadcaster(
            feed,
            FileSource(str(SAMPLE)),
            SMALL,
            BroadcastOptions(fast=True, title="sample", stats_path=tmp_path / "stats.json"),
        )
        await broadcaster.run()
        feed.verify_all()
        header, segments = _blocks(feed)
        assert appended == list(range(1, feed.length + 1))
        assert header.title == "sample" and (header.width, header.height, header.fps) == (
            160,
            96,
            30.0,
        )
        assert header.mime.endswith(',mp4a.40.2"') and header.init.startswith(
            b"\x00\x00\x00\x1cftyp"
        )
        assert header.extra["bitrate"] == 300_000 and header.extra["preset"] == "ultrafast"
        *media, end = segments
        assert end.end and end.data == b"" and end.pts == pytest.approx(10.0)
        assert len(media) == 10
        assert all(s.flags == FLAG_INDEPENDENT for s in media)  # parts as long as segments
        assert header.version == 2 and header.parts_per_segment == 1
        assert [s.pts for s in media] == pytest.approx([float(i) for i in range(10)])
        assert sum(s.duration for s in media) == pytest.approx(10.0)
        decoded = decode(header.init + b"".join(s.data for s in media))
        assert len(decoded.video_times) == 300
        assert all(abs(o) <= 0.05 for o in av_offsets(decoded)[1:])
        for segment in media[::3]:
            assert decode(header.init + segment.data).keyframes[0]
        mid = decode(header.init + b"".join(s.data for s in media[6:]))
        assert len(mid.video_times) == 120
        stats = json.loads((tmp_path / "stats.json").read_text())
        for field in (
            "key",
            "length",
            "blocks_have",
            "byte_length",
            "peers",
            "bytes_up",
            "bytes_down",
            "live_delay_s",
            "encoder_fps",
            "realtime_factor",
        ):
            assert field in stats
        assert stats["key"] == feed.key.hex() and stats["length"] == feed.length
        assert stats["state"] == "ended" and stats["realtime_factor"] > 0
        assert broadcaster.state is BroadcastState.ENDED


async def test_parts_are_blocks_and_independent_parts_start_each_segment(tmp_path: Path) -> None:
    settings = EncoderSettings(160, 96, Fraction(30), 300_000, 1.0, "ultrafast", part=0.2)
    with Feed.create(tmp_path / "feed") as feed:
        await _broadcast(feed, TestPatternSource(160, 96, 30, live=False), settings, duration=2.0)
        feed.verify_all()
        header, segments = _blocks(feed)
    assert (header.version, header.part_duration, header.parts_per_segment) == (2, 0.2, 5)
    *media, end = segments
    assert end.end and len(media) == 10
    assert [s.independent for s in media] == [True, False, False, False, False] * 2
    assert [s.back for s in media] == [0, 1, 2, 3, 4] * 2
    assert [s.pts for s in media] == pytest.approx([i * 0.2 for i in range(10)])
    assert all(s.duration == pytest.approx(0.2) for s in media)
    # Every part is one moof + mdat; a run from an independent part decodes on its own.
    assert all(s.data.count(b"moof") == 1 for s in media)
    decoded = decode(header.init + b"".join(s.data for s in media[5:]))
    assert len(decoded.video_times) == 30 and decoded.keyframes[0]
    assert decode(header.init + media[5].data).keyframes[0]
    assert not decode(header.init + media[6].data).keyframes  # no keyframe: nothing shows


async def test_a_second_run_resumes_the_stream_with_a_discontinuity(tmp_path: Path) -> None:
    with Feed.create(tmp_path / "feed") as feed:
        await _broadcast(feed, TestPatternSource(160, 96, 30, live=False), duration=2.5)
        first_length = feed.length
        resume = resume_point(feed)
        assert resume is not None and resume.end == pytest.approx(2.5)
        settings = plan_settings(TestPatternSource(160, 96, 30, live=False), resume=resume)
        assert settings == SMALL
        await _broadcast(feed, TestPatternSource(160, 96, 30, live=False), settings, duration=2.0)
        feed.verify_all()
        header, segments = _blocks(feed)
    media = [s for s in segments if not s.end]
    ends = [i for i, s in enumerate(segments) if s.end]
    assert ends == [first_length - 2, len(segments) - 1]
    resumed = segments[first_length - 1]
    assert resumed.flags == FLAG_DISCONTINUITY | FLAG_INDEPENDENT
    assert resumed.pts == pytest.approx(2.5 + 1 / 60, abs=1 / 60)  # on the frame grid after 2.5
    assert all(b.pts > a.pts for a, b in zip(media, media[1:], strict=False))
    assert [s.pts for s in media if s.pts > 3] == pytest.approx([4.0])
    decoded = decode(header.init + b"".join(s.data for s in media))
    assert len(decoded.video_times) == 135
    assert all(b > a for a, b in zip(decoded.video_times, decoded.video_times[1:], strict=False))
    assert decoded.video_times[-1] == pytest.approx(4.5 - 1 / 30 + 1024 / 48000, abs=0.02)


def test_resuming_with_other_settings_is_refused(tmp_path: Path) -> None:
    with Feed.create(tmp_path / "feed") as feed:
        asyncio.run(_broadcast(feed, TestPatternSource(160, 96, 30, live=False), duration=1.0))
        resume = resume_point(feed)
        length = feed.length
        source = TestPatternSource(160, 96, 30, live=False)
        for kwargs in (
            {"size": (320, 192)},
            {"fps": Fraction(25)},
            {"bitrate": 1_000_000},
            {"segment": 2.0},
            {"preset": "veryfast"},
        ):
            with pytest.raises(UsageError, match="resume it with the same value"):
                plan_settings(source, BroadcastOptions(**kwargs), resume)
        assert feed.length == length


async def test_an_encoder_that_makes_another_init_appends_nothing(tmp_path: Path) -> None:
    with Feed.create(tmp_path / "feed") as feed:
        await _broadcast(feed, TestPatternSource(160, 96, 30, live=False), duration=1.0)
        length = feed.length
        other = EncoderSettings(160, 96, Fraction(30), 900_000, 1.0, "ultrafast")
        with pytest.raises(MediaError, match="different init segment"):
            await _broadcast(feed, TestPatternSource(160, 96, 30, live=False), other, duration=1.0)
        assert feed.length == length
        feed.verify_all()


async def test_stop_ends_a_live_broadcast_cleanly(tmp_path: Path) -> None:
    with Feed.create(tmp_path / "feed") as feed:
        broadcaster = Broadcaster(feed, TestPatternSource(160, 96, 30, live=True), SMALL)
        two_segments = asyncio.Event()
        loop = asyncio.get_running_loop()

        def listener(event: FeedEvent) -> None:
            if event.length >= 3:
                loop.call_soon_threadsafe(two_segments.set)

        feed.add_listener(listener)
        task = asyncio.create_task(broadcaster.run())
        await asyncio.wait_for(two_segments.wait(), 20)
        broadcaster.stop()
        assert broadcaster.state is BroadcastState.STOPPING
        await asyncio.wait_for(task, 20)
        assert broadcaster.state is BroadcastState.ENDED
        feed.verify_all()
        header, segments = _blocks(feed)
        assert segments[-1].flags == FLAG_END
        media = segments[:-1]
        assert len(media) >= 2
        assert segments[-1].pts == pytest.approx(media[-1].pts + media[-1].duration)
        assert len(broadcaster.latencies) == sum(round(s.duration * 30) for s in media)
        decoded = decode(header.init + b"".join(s.data for s in media))
        assert len(decoded.video_times) == len(broadcaster.latencies)


async def test_stats_providers_fill_the_swarm_fields(tmp_path: Path) -> None:
    with Feed.create(tmp_path / "feed") as feed:
        broadcaster = Broadcaster(
            feed,
            TestPatternSource(160, 96, 30, live=False),
            SMALL,
            BroadcastOptions(fast=True, duration=2.0),
        )
        assert broadcaster.snapshot()["peers"] == 0
        broadcaster.stats_providers.append(lambda: {"peers": 4, "bytes_up": 1234})
        await broadcaster.run()
        assert feed.length == 4
        assert broadcaster.snapshot()["peers"] == 4


class _RecordingSource(TestPatternSource):
    """The test pattern, noting which threads decode its frames."""

    def __init__(self) -> None:
        super().__init__(160, 96, 30, live=False)
        self.threads: set[int] = set()

    def frames(self, stop):
        for item in super().frames(stop):
            self.threads.add(threading.get_ident())
            yield item


async def test_media_work_never_runs_on_the_event_loop_thread(tmp_path: Path) -> None:
    source = _RecordingSource()
    append_threads: set[int] = set()
    with Feed.create(tmp_path / "feed") as feed:
        feed.add_listener(lambda event: append_threads.add(threading.get_ident()))
        broadcaster = Broadcaster(feed, source, SMALL, BroadcastOptions(fast=True, duration=1.0))
        await broadcaster.run()
        assert feed.length == 3
    assert append_threads and threading.get_ident() not in append_threads  # disk writes too
    assert source.threads and threading.get_ident() not in source.threads
