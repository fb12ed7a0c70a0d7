"""The local player server over a real Feed holding a real PyAV-encoded stream, on a real aiohttp
server: what each endpoint answers, waiting for blocks that are still to come, and errors."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import av
import pytest

from streamer.core.feed import Feed
from streamer.media.format import SEGMENT_HEADER_SIZE, Segment, StreamHeader
from tests.fixtures_viewer import EncodedStream, encode_test_stream, write_feed
from viewer.server import PlayerServer
from viewer.source import STATS_KEYS, LocalFeedSource

SECONDS = 8


@pytest.fixture(scope="module")
def stream() -> EncodedStream:
    return encode_test_stream(SECONDS)


class Served:
    def __init__(self, feed: Feed, server: PlayerServer, http: aiohttp.ClientSession) -> None:
        self.feed, self.server, self.http = feed, server, http

    async def get(self, path: str) -> aiohttp.ClientResponse:
        return await self.http.get(self.server.url + path.lstrip("/"))


async def serve(feed: Feed, block_timeout: float = 10.0) -> AsyncIterator[Served]:
    server = PlayerServer(LocalFeedSource(feed), block_timeout=block_timeout)
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield Served(feed, server, http)
    await server.stop()
    feed.close()


@pytest.fixture
async def live(stream: EncodedStream, tmp_path: Path) -> AsyncIterator[Served]:
    """A live stream: the header and the first half of the segments, more to come."""
    feed = write_feed(tmp_path / "feed", [stream.header, *stream.segments[: SECONDS // 2]])
    async for served in serve(feed):
        yield served


@pytest.fixture
async def ended(stream: EncodedStream, tmp_path: Path) -> AsyncIterator[Served]:
    feed = write_feed(tmp_path / "feed", [stream.header, *stream.segments, stream.end_marker()])
    async for served in serve(feed):
        yield served


def _decode_frames(data: bytes) -> int:
    with av.open(io.BytesIO(data), format="mp4") as container:
        return sum(1 for _ in container.decode(video=0))


async def test_the_server_listens_on_loopback_only(live: Served) -> None:
    assert live.server.url.startswith("http://127.0.0.1:")
    assert live.server.port > 0


async def test_init_and_blocks_are_the_stream_bytes_and_decode(
    ended: Served, stream: EncodedStream
) -> None:
    init = await (await ended.get("/init.mp4")).read()
    assert init == StreamHeader.decode(stream.header).init
    blocks = []
    for index in range(1, SECONDS + 1):
        response = await ended.get(f"/block/{index}.m4s")
        assert response.status == 200
        assert response.headers["Content-Type"] == "video/iso.segment"
        segment = Segment.decode(stream.segments[index - 1])
        assert float(response.headers["X-Pts"]) == pytest.approx(segment.pts)
        body = await response.read()
        assert body == stream.segments[index - 1][SEGMENT_HEADER_SIZE:]
        blocks.append(body)
    frames = await asyncio.to_thread(_decode_frames, init + b"".join(blocks))
    assert frames == SECONDS * 10


async def test_a_run_starting_mid_stream_decodes(ended: Served) -> None:
    init = await (await ended.get("/init.mp4")).read()
    tail = [await (await ended.get(f"/block/{i}.m4s")).read() for i in (6, 7)]
    assert await asyncio.to_thread(_decode_frames, init + b"".join(tail)) == 20


async def test_a_block_appended_while_a_client_waits_for_it_is_served(
    live: Served, stream: EncodedStream
) -> None:
    nxt = live.feed.length
    waiting = asyncio.create_task(live.get(f"/block/{nxt}.m4s"))
    polling = asyncio.create_task(live.get(f"/events?since={nxt}&timeout=20"))
    done, _ = await asyncio.wait({waiting, polling}, timeout=0.3)
    assert not done, "the server answered before the block existed"
    live.feed.append([stream.segments[nxt - 1]])
    response = await asyncio.wait_for(waiting, 5)
    assert response.status == 200
    assert await response.read() == stream.segments[nxt - 1][SEGMENT_HEADER_SIZE:]
    event = await (await asyncio.wait_for(polling, 5)).json()
    assert event["length"] == nxt + 1 and event["changed"] is True
    assert set(STATS_KEYS) <= set(event["stats"])


async def test_events_answer_at_once_when_the_client_is_behind(live: Served) -> None:
    event = await (await live.get("/events?since=0&timeout=20")).json()
    assert event["length"] == live.feed.length
    quiet = await (await live.get(f"/events?since={live.feed.length}&timeout=0.1")).json()
    assert quiet["changed"] is False


async def test_a_block_that_does_not_arrive_in_time_is_a_504(live: Served) -> None:
    response = await live.get(f"/block/{live.feed.length}.m4s?timeout=0.1")
    assert response.status == 504


@pytest.mark.parametrize("path", ["/block/0.m4s", "/block/x.m4s", "/block/-1.m4s", "/block/99.m4s"])
async def test_blocks_outside_the_stream_are_404(live: Served, path: str) -> None:
    assert (await live.get(path)).status == 404


async def test_after_the_end_the_end_marker_and_later_blocks_are_404_at_once(ended: Served) -> None:
    end_marker = ended.feed.length - 1
    for index in (end_marker, end_marker + 1):
        response = await asyncio.wait_for(ended.get(f"/block/{index}.m4s"), 2)
        assert response.status == 404


async def test_the_timeline_places_every_block(live: Served, stream: EncodedStream) -> None:
    info = await (await live.get("/index.json")).json()
    assert info["mime"].startswith('video/mp4; codecs="avc1.')
    assert info["segment_duration"] == 1.0
    assert info["ended"] is False
    assert info["length"] == SECONDS // 2 + 1
    assert set(info["blocks"][0]) == {
        "index", "pts", "duration", "flags", "known", "independent", "back"
    }
    assert [row["index"] for row in info["blocks"]] == list(range(1, SECONDS // 2 + 1))
    assert [row["pts"] for row in info["blocks"]] == [float(i) for i in range(SECONDS // 2)]
    assert all(row["known"] is True for row in info["blocks"])
    assert info["live_edge"] == pytest.approx(SECONDS // 2)
    tail = await (await live.get("/timeline?from=3")).json()
    assert [row["index"] for row in tail["blocks"]] == [3, 4]


async def test_the_timeline_of_an_ended_stream_leaves_out_the_end_marker(ended: Served) -> None:
    info = await (await ended.get("/index.json")).json()
    assert info["ended"] is True
    assert len(info["blocks"]) == SECONDS
    assert info["live_edge"] == pytest.approx(SECONDS)


async def test_stats_have_the_agreed_keys(live: Served) -> None:
    stats = await (await live.get("/stats")).json()
    assert set(STATS_KEYS) <= set(stats)
    assert stats["key"] == live.feed.key.hex()
    assert stats["length"] == live.feed.length
    assert stats["blocks_have"] == live.feed.length
    assert stats["ended"] is False


async def test_the_page_reports_its_playhead_into_stats(live: Served) -> None:
    response = await live.http.post(
        live.server.url + "playhead", json={"block": 3, "time": 2.5, "delay_s": 1.5}
    )
    assert response.status == 200
    stats = await (await live.get("/stats")).json()
    assert stats["player"]["block"] == 3 and stats["playhead"] == 3
    bad = await live.http.post(live.server.url + "playhead", data=b"nonsense")
    assert bad.status == 400


async def test_the_page_and_its_scripts_are_served(live: Served) -> None:
    page = await (await live.get("/")).text()
    assert "/static/player.js" in page
    for name in ("player.js", "player.css"):
        assert (await live.get(f"/static/{name}")).status == 200


async def test_a_feed_that_is_not_a_stream_is_a_502(tmp_path: Path) -> None:
    feed = write_feed(tmp_path / "feed", [b"not a stream header", b"x"])
    async for served in serve(feed):
        response = await served.get("/init.mp4")
        assert response.status == 502
        assert "not a swarmcast stream header" in await response.text()


async def test_an_empty_feed_makes_init_wait_then_time_out(tmp_path: Path) -> None:
    feed = write_feed(tmp_path / "feed", [])
    async for served in serve(feed, block_timeout=0.2):
        assert (await served.get("/init.mp4")).status == 504
