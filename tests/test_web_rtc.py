"""The tab's protocol core over real WebRTC: headless Chromium (a minimal data-channel glue around
streamer/web's PeerSet) and real aiortc peers running the Python NetworkReplicator. A writer
sends 6 MB (more than the 4 MiB credit window) to the tab, which verifies every block, sees the
writer's signed capability, and re-shares everything to a Python viewer whose only neighbour it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Page, async_playwright

from streamer.core import crypto
from streamer.core.feed import Feed
from streamer.core.handshake import Handshaker
from streamer.net.replicator import NetworkReplicator
from streamer.net.rtc import RtcPeer
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-component-update"]
WRITER = crypto.key_pair(b"\x0b" * 32)
BLOCKS = [bytes([i]) * 300_000 for i in range(20)]
PAGE = """<!doctype html><meta charset="utf-8"><title>rtc</title>
<script type="module" src="/rtc_check.mjs"></script>"""


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    async def index(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def glue(_: web.Request) -> web.FileResponse:
        return web.FileResponse(ROOT / "tests" / "js" / "rtc_check.mjs")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/rtc_check.mjs", glue)
    app.router.add_static("/web/", ROOT / "streamer" / "web")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = await browser.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        await tab.goto(f"http://127.0.0.1:{port}/")
        await tab.wait_for_function("window.ready === true", timeout=10_000)
        yield tab
        assert errors == []
        await browser.close()
    await runner.cleanup()


async def dial(node: NetworkReplicator, tab: Page, name: str, secret_key: bytes | None) -> str:
    """Connect a Python node to the tab as Python's swarm would: aiortc offers, the tab answers,
    both run the feed-key handshake bound to the DTLS fingerprints."""
    peer = RtcPeer(name, initiator=True, ice_servers=[])
    offer = await peer.offer()
    answer = await tab.evaluate("([id, sdp]) => tab.answer(id, sdp)", [name, offer])
    await peer.accept(answer)
    conn = await peer.channel(20)
    handshake = Handshaker(node.feed.key, peer.handshake_hash(), True, secret_key)
    for chunk in handshake.datagrams_to_send():
        await conn.send(chunk)
    conn.is_writer = handshake.receive(await conn.recv())
    node.add_connection(conn)
    return answer


async def test_a_chromium_tab_verifies_from_an_aiortc_writer_and_reshares(
    page: Page, tmp_path: Path
) -> None:
    writer_feed = Feed.create(tmp_path / "w", WRITER)
    writer_feed.append(BLOCKS)
    writer = NetworkReplicator(writer_feed, None)
    await writer.start()
    reader_feed = Feed.open(tmp_path / "r", key=WRITER.public_key, create=True)
    reader = NetworkReplicator(reader_feed, None, archive=True)
    await reader.start()
    try:
        await page.evaluate("key => tab.init(key)", WRITER.public_key.hex())
        answer = await dial(writer, page, "writer", WRITER.secret_key)
        # Chromium hides its host addresses behind mDNS names; aioice resolves them (no flag).
        candidates = [line for line in answer.splitlines() if line.startswith("a=candidate")]
        assert candidates and all(".local " in c for c in candidates if " typ host" in c)
        await page.evaluate(f"tab.want(0, {len(BLOCKS)})")
        await page.wait_for_function(
            f"tab.stats().blocks_have === {len(BLOCKS)}", timeout=60_000, polling=100
        )
        digests = await page.evaluate("tab.digests()")
        assert digests == [hashlib.blake2b(b, digest_size=32).hexdigest() for b in BLOCKS]
        stats = await page.evaluate("tab.stats()")
        assert stats["writer_connected"] is True  # the writer's signed capability verified
        assert stats["blocks_from_writer"] == len(BLOCKS) and stats["peers_dropped"] == 0
        assert stats["bytes_down"] > 4 * 1024 * 1024  # more than one credit window crossed

        # The tab passes it all on to a Python viewer that has no other neighbour.
        await dial(reader, page, "viewer", None)
        await eventually(
            lambda: reader_feed.contiguous_length == len(BLOCKS),
            "the viewer to fetch from the tab",
            timeout=60,
        )
        assert [reader_feed.get(i) for i in range(len(BLOCKS))] == BLOCKS
        assert reader.stats().blocks_from_peers == len(BLOCKS)
        stats = await page.evaluate("tab.stats()")
        assert stats["blocks_up"] == len(BLOCKS) and stats["peers"] == 2
        events = await page.evaluate("tab.events")
        assert not [e for e in events if e["type"] == "misbehaved"]
    finally:
        await reader.stop()
        await writer.stop()
        writer_feed.close()
        reader_feed.close()
