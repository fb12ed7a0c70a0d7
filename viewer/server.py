"""The viewer's local player server: the page, the init segment and blocks as fMP4, a timeline,
long-poll events, a low-latency HLS EVENT playlist (segments = runs of parts from one independent
part to the next, parts = blocks, blocking reload) and live stats, all read from one BlockSource.

It binds to 127.0.0.1 only, serves nothing but verified blocks from its source, and never does
blocking work on the event loop (no PyAV here; media is passed through byte for byte).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from streamer.core.errors import BlockNotFoundError, StreamFormatError
from streamer.media.format import (
    SegmentHeader,
    StreamHeader,
    Timeline,
    TimelineEntry,
    segment_media,
)
from streamer.net.aio import run_until
from viewer.source import BlockSource

STATIC_DIR = Path(str(resources.files("viewer") / "static"))
BLOCK_CACHE = "public, max-age=31536000, immutable"  # a signed block never changes
MAX_LOOKAHEAD = 3  # blocks past the signed length a client may wait for (the next live block)
MAX_WAIT_S = 60.0
UNAVAILABLE_S = 3.0  # a block no neighbour announced this long, with a later one held, is gone
HLS_PART_SEGMENTS = 4  # the newest segments whose parts the playlist lists (LL-HLS wants >= 3)
MAX_RUN_BLOCKS = 4096  # blocks one HLS segment URI may join
TIMING_BATCH = 32  # uncached segment headers read between two yields to the loop


@dataclass
class PlayerState:
    """What the server knows about the stream beyond its source: parsed header, timeline."""

    source: BlockSource
    block_timeout: float
    header: StreamHeader | None = None
    timeline: Timeline = field(default_factory=Timeline)
    player: dict[str, Any] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Blocks in a hole of the source (held by no one, a later one held): since when, by the
    # loop's clock. One that stayed in a hole UNAVAILABLE_S is gone (the playlist's gaps).
    hole_since: dict[int, float] = field(default_factory=dict)

    async def stream_header(self) -> StreamHeader:
        if self.header is None:
            self.header = StreamHeader.decode(await self.source.get(0, self.block_timeout))
        return self.header

    async def media_blocks(self, first: int = 1) -> list[TimelineEntry]:
        """The timeline's entries for blocks `first`.. up to the newest media block, after
        reading the headers of the blocks held (Timeline places the others on the grid)."""
        header = await self.stream_header()
        length = self.source.length
        timeline, source = self.timeline, self.source
        read = 0
        for index in range(1, length):
            known = timeline.get(index)
            if known is None and source.has(index):
                read += 1
                if read % TIMING_BATCH == 0:
                    # A first look at a long archive reads many blocks: let other requests
                    # (block fetches, peers) run between batches.
                    await asyncio.sleep(0)
                await self.held_timing(index)
        return timeline.entries(length, header.grid, first)

    def gaps(self) -> tuple[set[int], float | None]:
        """The blocks held by no one for UNAVAILABLE_S by now (as the source's holes say), and
        how long until the next block of a hole counts too (None: no hole is pending)."""
        now = asyncio.get_running_loop().time()
        since = {
            b: self.hole_since.get(b, now)
            for start, end in self.source.holes()
            for b in range(start, end)
        }
        self.hole_since = since
        gone = {b for b, t in since.items() if now - t >= UNAVAILABLE_S}
        pending = [t + UNAVAILABLE_S - now for b, t in since.items() if b not in gone]
        return gone, min(pending, default=None)

    async def held_timing(self, index: int) -> SegmentHeader | None:
        """The header of block `index` if it is held (read once, then kept in the timeline)."""
        known = self.timeline.get(index)
        if known is None and self.source.has(index):
            block = await self.source.get(index, self.block_timeout)
            known = self.timeline.add_block(index, block)
        return known


STATE = web.AppKey("state", PlayerState)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


async def _page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


async def _init(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        header = await state.stream_header()
    except TimeoutError:
        raise web.HTTPGatewayTimeout(text="the stream header did not arrive in time") from None
    return web.Response(body=header.init, content_type="video/mp4")


async def _block(request: web.Request) -> web.Response:
    state = request.app[STATE]
    source = state.source
    try:
        index = int(request.match_info["index"])
    except ValueError:
        raise web.HTTPNotFound(text="block index must be a number") from None
    timeout = state.block_timeout
    if "timeout" in request.query:
        try:
            timeout = min(MAX_WAIT_S, max(0.0, float(request.query["timeout"])))
        except ValueError:
            raise web.HTTPBadRequest(text="timeout must be a number of seconds") from None
    limit = source.length if source.ended else source.length + MAX_LOOKAHEAD
    if index < 1 or index >= limit:
        raise web.HTTPNotFound(text=f"block {index} is past the end of the stream")
    try:
        block = await _block_or_gone(source, index, timeout)
    except TimeoutError:
        raise web.HTTPGatewayTimeout(text=f"block {index} did not arrive in time") from None
    except BlockNotFoundError as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    if isinstance(block, int):
        raise _gone(index, block)
    try:
        segment = state.timeline.add_block(index, block)
    except StreamFormatError as exc:
        raise web.HTTPBadGateway(text=str(exc)) from None
    if segment.end:
        raise web.HTTPNotFound(text=f"block {index} is the end of the stream")
    source.set_playhead(index)
    return web.Response(
        body=segment_media(block),
        content_type="video/iso.segment",
        headers={
            "Cache-Control": BLOCK_CACHE,
            "X-Pts": f"{segment.pts:.6f}",
            "X-Duration": f"{segment.duration:.6f}",
            "X-Flags": str(segment.flags),
            "X-Independent": "1" if segment.independent else "0",
            "X-Wall-Clock": f"{segment.wall_clock:.6f}",
        },
    )


def _gone(index: int, goes_on_at: int) -> web.HTTPGone:
    """410: block `index` is held by no one now, so waiting is in vain; the page plays on from
    `X-Goes-On-At`."""
    return web.HTTPGone(
        text=f"block {index} is held by no peer; the stream goes on at block {goes_on_at}",
        headers={"X-Goes-On-At": str(goes_on_at)},
    )


async def _block_or_gone(source: BlockSource, index: int, timeout: float) -> bytes | int:
    """Block `index` within `timeout` seconds; or, once it has been missing UNAVAILABLE_S and
    the source says no one holds it while a later block is held (source.goes_on_at), the index of
    that later block."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    check_at = loop.time() + UNAVAILABLE_S
    while True:
        now = loop.time()
        try:
            return await source.get(index, max(0.0, min(deadline, check_at) - now))
        except TimeoutError:
            if loop.time() >= deadline:
                raise
        at = source.goes_on_at(index)
        if at is not None:
            return at
        check_at = loop.time() + 0.5


async def _run(request: web.Request) -> web.Response:
    """An HLS segment: the payloads of blocks first..last, a run from one independent part."""
    state = request.app[STATE]
    source = state.source
    try:
        first, last = (int(v) for v in request.match_info["span"].split("-"))
    except ValueError:
        raise web.HTTPNotFound(text="a segment is run/FIRST-LAST.m4s") from None
    if not 1 <= first <= last < source.length or last - first >= MAX_RUN_BLOCKS:
        raise web.HTTPNotFound(text=f"blocks {first}..{last} are not a run of this stream")
    body = bytearray()
    for index in range(first, last + 1):
        try:
            block = await _block_or_gone(source, index, state.block_timeout)
        except TimeoutError:
            raise web.HTTPGatewayTimeout(text=f"block {index} did not arrive in time") from None
        except BlockNotFoundError as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        if isinstance(block, int):
            raise _gone(index, block)  # the playlist marks it #EXT-X-GAP
        header = state.timeline.add_block(index, block)
        if header.end:
            raise web.HTTPNotFound(text=f"block {index} is the end of the stream")
        if index == first and not header.independent:
            raise web.HTTPNotFound(text=f"block {index} is not an independent part")
        body += segment_media(block)
    source.set_playhead(last)
    return web.Response(
        body=bytes(body), content_type="video/iso.segment", headers={"Cache-Control": BLOCK_CACHE}
    )


async def _timeline(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        first = max(1, int(request.query.get("from", "1")))
    except ValueError:
        raise web.HTTPBadRequest(text="from must be a block index") from None
    header = await state.stream_header()
    rows = await state.media_blocks(first)
    # The live edge is where the newest media block ends (`from` may lie past it).
    tail = rows or await state.media_blocks(max(1, state.source.length - 2))
    live_edge = tail[-1].stop if tail else 0.0
    stats = state.source.stats()
    return _json(
        {
            "key": stats.get("key"),
            "title": header.title,
            "mime": header.mime,
            "width": header.width,
            "height": header.height,
            "fps": header.fps,
            "start_time": header.start_time,
            "segment_duration": header.segment_duration,
            "part_duration": header.block_duration,
            "version": header.version,
            "length": state.source.length,
            "ended": state.source.ended,
            "live_edge": live_edge,
            # Where this viewer started playing (null for a local feed): history before it may
            # be held too, fetched for the swarm's archive (--keep), not watched.
            "join_block": stats.get("join_block"),
            # One object per media block from `from` on (TimelineEntry's fields).
            "blocks": [_entry_json(entry) for entry in rows],
        }
    )


def _entry_json(entry: TimelineEntry) -> dict[str, Any]:
    return {
        "index": entry.index,
        "pts": round(entry.pts, 6),
        "duration": round(entry.duration, 6),
        "flags": entry.flags,
        "known": entry.known,
        "independent": entry.independent,
        "back": entry.back,
    }


async def _events(request: web.Request) -> web.Response:
    """Long poll: answers when the length differs from `since`, on any change, or on timeout."""
    state = request.app[STATE]
    source = state.source
    try:
        since = int(request.query.get("since", "-1"))
        timeout = min(MAX_WAIT_S, max(0.0, float(request.query.get("timeout", "25"))))
    except ValueError:
        raise web.HTTPBadRequest(text="since must be a block count and timeout seconds") from None
    changed = source.length != since
    if not changed:
        # None when the server stops first.
        changed = bool(await run_until(source.wait_for_change(timeout), state.stopping))
    return _json(
        {
            "length": source.length,
            "ended": source.ended,
            "changed": bool(changed),
            "stats": _stats_body(state),
        }
    )


@dataclass
class _HlsSegment:
    """A run of blocks from one independent part to the next: an HLS segment of parts."""

    msn: int
    parts: list[TimelineEntry]
    complete: bool

    @property
    def duration(self) -> float:
        return sum(p.duration for p in self.parts)

    @property
    def uri(self) -> str:
        first, last = self.parts[0].index, self.parts[-1].index
        return f"block/{first}.m4s" if first == last else f"run/{first}-{last}.m4s"


def _hls_segments(rows: list[TimelineEntry], ended: bool, parts: int) -> list[_HlsSegment]:
    """Runs of rows from each independent part on; a run is complete once the next one starts,
    the stream ended, or it holds the `parts` parts a segment is cut into."""
    segments: list[_HlsSegment] = []
    for entry in rows:
        if not segments or entry.independent or entry.discontinuity:
            if segments:
                segments[-1].complete = True
            segments.append(_HlsSegment(len(segments) + 1, [], False))
        segments[-1].parts.append(entry)
    if segments and (ended or len(segments[-1].parts) >= parts):
        segments[-1].complete = True
    return segments


def _hls_has(segments: list[_HlsSegment], msn: int, part: int | None) -> bool:
    """Whether the playlist holds segment `msn` (whole) or its part `part` (LL-HLS blocking)."""
    if not segments or msn > segments[-1].msn:
        return False
    seg = segments[msn - 1]
    return seg.complete if part is None else seg.complete or part < len(seg.parts)


async def _playlist(request: web.Request) -> web.Response:
    state = request.app[STATE]
    header = await state.stream_header()
    query = request.query
    try:
        msn = int(query["_HLS_msn"]) if "_HLS_msn" in query else None
        part = int(query["_HLS_part"]) if "_HLS_part" in query else None
    except ValueError:
        raise web.HTTPBadRequest(text="_HLS_msn and _HLS_part are numbers") from None
    if part is not None and msn is None:
        raise web.HTTPBadRequest(text="_HLS_part needs _HLS_msn") from None
    rows = await state.media_blocks()
    segments = _hls_segments(rows, state.source.ended, header.grid.parts)
    if msn is not None:
        # Blocking reload: answer once the asked segment (or part) is in the playlist.
        newest = segments[-1].msn if segments else 0
        if msn > newest + 2:
            raise web.HTTPBadRequest(text=f"_HLS_msn {msn} is too far past the live edge")
        deadline = time.monotonic() + 3 * max(1.0, header.segment_duration)
        while not state.source.ended and not _hls_has(segments, msn, part):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await run_until(state.source.wait_for_change(remaining), state.stopping)
            if state.stopping.is_set():
                break
            rows = await state.media_blocks()
            segments = _hls_segments(rows, state.source.ended, header.grid.parts)
    gone, pending = state.gaps()
    if state.source.ended:
        # A finished stream's playlist is read once: a hole not yet known to be gone (the
        # neighbours' announcements arrive after they connect) is waited for. UNAVAILABLE_S
        # suffices unless blocks keep joining holes, each with a clock of its own: 2x at most.
        until = time.monotonic() + 2 * UNAVAILABLE_S
        while pending is not None and not state.stopping.is_set():
            wait = min(pending, until - time.monotonic())
            if wait <= 0:
                break
            await run_until(state.source.wait_for_change(wait), state.stopping)
            gone, pending = state.gaps()
    with_parts = header.grid.parts > 1
    target = math.ceil(
        max([header.segment_duration] + [s.duration for s in segments if s.complete]) - 1e-3
    )
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:9" if with_parts else "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{max(1, target)}",
    ]
    if with_parts:
        part_target = max([header.block_duration] + [e.duration for e in rows[-64:]])
        part_target = math.ceil(part_target * 1000 - 1e-6) / 1000
        lines += [
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * part_target:.3f}",
            f"#EXT-X-PART-INF:PART-TARGET={part_target:.3f}",
        ]
    lines += [
        "#EXT-X-PLAYLIST-TYPE:EVENT",
        "#EXT-X-MEDIA-SEQUENCE:1",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-MAP:URI="init.mp4"',
    ]
    recent = len(segments) - HLS_PART_SEGMENTS
    for k, seg in enumerate(segments):
        if seg.parts[0].discontinuity and seg.parts[0].index > 1:
            lines.append("#EXT-X-DISCONTINUITY")
        # Media held by no one: a gap from its first gone part on (the parts after it in the
        # run decode from it), and so the whole segment.
        gap_from = next((n for n, e in enumerate(seg.parts) if e.index in gone), len(seg.parts))
        if with_parts and k >= recent:
            for n, entry in enumerate(seg.parts):
                independent = ",INDEPENDENT=YES" if entry.independent else ""
                gap = ",GAP=YES" if n >= gap_from else ""
                lines.append(
                    f'#EXT-X-PART:DURATION={entry.duration:.6f},URI="block/{entry.index}.m4s"'
                    f"{independent}{gap}"
                )
        if seg.complete:
            if gap_from < len(seg.parts):
                lines.append("#EXT-X-GAP")
            lines.append(f"#EXTINF:{seg.duration:.6f},")
            lines.append(seg.uri)
    if state.source.ended:
        lines.append("#EXT-X-ENDLIST")
    elif with_parts:
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="block/{state.source.length}.m4s"')
    return web.Response(
        text="\n".join(lines) + "\n",
        content_type="application/vnd.apple.mpegurl",
        headers={"Cache-Control": "no-store"},
    )


def _stats_body(state: PlayerState) -> dict[str, Any]:
    body = dict(state.source.stats())
    if state.player:
        body["player"] = dict(state.player)
    return body


async def _stats(request: web.Request) -> web.Response:
    return _json(_stats_body(request.app[STATE]))


async def _playhead(request: web.Request) -> web.Response:
    """The page reports where it plays, so a network source can fetch ahead of it."""
    state = request.app[STATE]
    try:
        body = await request.json()
        block = int(body["block"])
        report = {
            "block": block,
            "time": float(body.get("time", 0.0)),
            "delay_s": float(body.get("delay_s", 0.0)),
            "at": time.time(),
        }
    except (ValueError, KeyError, TypeError):
        raise web.HTTPBadRequest(text='send JSON {"block": N, "time": S, "delay_s": S}') from None
    state.player = report
    state.source.set_playhead(block)
    return _json({"ok": True})


async def _on_shutdown(app: web.Application) -> None:
    app[STATE].stopping.set()


def create_app(source: BlockSource, *, block_timeout: float = 20.0) -> web.Application:
    """The player application over `source`; `block_timeout` bounds every wait for a block."""
    app = web.Application()
    app[STATE] = PlayerState(source, block_timeout)
    app.router.add_get("/", _page)
    app.router.add_get("/init.mp4", _init)
    app.router.add_get(r"/block/{index}.m4s", _block)
    app.router.add_get(r"/run/{span}.m4s", _run)
    app.router.add_get("/index.json", _timeline)
    app.router.add_get("/timeline", _timeline)
    app.router.add_get("/events", _events)
    app.router.add_get("/live.m3u8", _playlist)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/playhead", _playhead)
    app.router.add_static("/static/", STATIC_DIR)
    app.on_shutdown.append(_on_shutdown)

    @web.middleware
    async def _stream_errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except StreamFormatError as exc:
            raise web.HTTPBadGateway(text=str(exc)) from None
        except TimeoutError:
            raise web.HTTPGatewayTimeout(text="the stream header did not arrive in time") from None

    app.middlewares.append(_stream_errors)
    return app


class PlayerServer:
    """The player app embedded in a running program: `async with PlayerServer(source) as s`."""

    def __init__(
        self,
        source: BlockSource,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        block_timeout: float = 20.0,
    ) -> None:
        self.app = create_app(source, block_timeout=block_timeout)
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("the player server is not running")
        return self._runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}/"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.app[STATE].source.close()

    async def __aenter__(self) -> PlayerServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()
