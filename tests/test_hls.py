"""The player server's HLS EVENT playlist, read by FFmpeg's own HLS demuxer (PyAV) in another
process: a finished stream decodes whole, a live one grows under the reader, ENDLIST at the end."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from streamer.core.feed import Feed
from streamer.media.format import FLAG_DISCONTINUITY, Segment
from tests.fixtures_viewer import EncodedStream, encode_test_stream, write_feed
from viewer.server import PlayerServer
from viewer.source import LocalFeedSource

SECONDS = 6
FPS = 10

# Runs in a child process: FFmpeg's HLS demuxer fetches the playlist, the init and the blocks.
READER = r"""
import json, sys, av
url = sys.argv[1]
options = {"live_start_index": "0", "m3u8_hold_counters": "1000"}
with av.open(url, format="hls", options=options, timeout=20) as c:
    v = c.streams.video[0]
    frames = 0
    last = None
    for frame in c.decode(v):
        frames += 1
        last = float(frame.time)
        if frames == 1:
            print(json.dumps({"first": last}), flush=True)
print(json.dumps({"frames": frames, "last": last}), flush=True)
"""


@pytest.fixture(scope="module")
def stream() -> EncodedStream:
    return encode_test_stream(SECONDS, fps=FPS)


@pytest.fixture
async def make_server() -> AsyncIterator:
    started: list[tuple[PlayerServer, Feed]] = []

    async def start(feed: Feed) -> PlayerServer:
        server = PlayerServer(LocalFeedSource(feed))
        await server.start()
        started.append((server, feed))
        return server

    yield start
    for server, feed in started:
        await server.stop()
        feed.close()


async def _playlist(server: PlayerServer) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "live.m3u8") as response:
            assert response.status == 200
            assert response.content_type == "application/vnd.apple.mpegurl"
            return await response.text()


async def _reader(server: PlayerServer) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        READER,
        server.url + "live.m3u8",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_a_finished_stream_playlist_has_every_block_and_endlist(
    stream: EncodedStream, tmp_path: Path, make_server
) -> None:
    feed = write_feed(tmp_path / "f", [stream.header, *stream.segments, stream.end_marker()])
    text = await _playlist(await make_server(feed))
    lines = text.splitlines()
    assert lines[:2] == ["#EXTM3U", "#EXT-X-VERSION:7"]
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in lines
    assert "#EXT-X-TARGETDURATION:1" in lines
    assert '#EXT-X-MAP:URI="init.mp4"' in lines
    assert [line for line in lines if line.endswith(".m4s")] == [
        f"block/{i}.m4s" for i in range(1, SECONDS + 1)
    ]
    assert lines.count("#EXTINF:1.000000,") == SECONDS
    assert lines[-1] == "#EXT-X-ENDLIST"


async def test_ffmpeg_decodes_a_finished_stream_from_the_playlist(
    stream: EncodedStream, tmp_path: Path, make_server
) -> None:
    feed = write_feed(tmp_path / "f", [stream.header, *stream.segments, stream.end_marker()])
    reader = await _reader(await make_server(feed))
    out, err = await asyncio.wait_for(reader.communicate(), 60)
    assert reader.returncode == 0, err.decode()
    result = json.loads(out.decode().splitlines()[-1])
    assert result["frames"] == SECONDS * FPS


async def test_ffmpeg_follows_a_live_playlist_until_endlist(
    stream: EncodedStream, tmp_path: Path, make_server
) -> None:
    feed = write_feed(tmp_path / "f", [stream.header, *stream.segments[:2]])
    server = await make_server(feed)
    assert "#EXT-X-ENDLIST" not in await _playlist(server)
    # FFmpeg probes past the two blocks there are, so it must see the playlist grow meanwhile.
    reader = await _reader(server)
    for segment in stream.segments[2:]:
        await asyncio.sleep(0.3)  # a live source: blocks come over time, not all at once
        feed.append([segment])
    assert f"block/{SECONDS}.m4s" in await _playlist(server)
    feed.append([stream.end_marker()])
    assert (await _playlist(server)).rstrip().endswith("#EXT-X-ENDLIST")
    out, err = await asyncio.wait_for(reader.communicate(), 60)
    assert reader.returncode == 0, err.decode()
    first, result = (json.loads(line) for line in out.decode().splitlines()[-2:])
    assert first["first"] == pytest.approx(0.0, abs=0.05)
    assert result["frames"] == SECONDS * FPS


async def test_a_discontinuity_flag_becomes_ext_x_discontinuity(
    stream: EncodedStream, tmp_path: Path, make_server
) -> None:
    restarted = Segment.decode(stream.segments[3])
    restarted.flags |= FLAG_DISCONTINUITY
    blocks = [stream.header, *stream.segments[:3], restarted.encode(), *stream.segments[4:]]
    text = await _playlist(await make_server(write_feed(tmp_path / "f", blocks)))
    lines = text.splitlines()
    at = lines.index("block/4.m4s")
    assert lines[at - 2] == "#EXT-X-DISCONTINUITY"
    assert lines.count("#EXT-X-DISCONTINUITY") == 1
    assert "#EXT-X-ENDLIST" not in lines
