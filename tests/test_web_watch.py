"""The watch link end to end: `streamer hub` and `streamer broadcast` as real processes, the page
/watch/{name or key} in headless Chromium (one browser context per tab), real aiortc viewers and
seeders. Three tabs and no Python viewer play a live stream mostly from each other while the
broadcaster uploads about one copy; a tab seeks back to evicted media; a late tab plays after the
broadcaster left; a late tab steps over the start of an ended stream that no one holds; a tab and
Python viewers trade blocks both ways; a seeder with flipped bytes
is banned by a tab that keeps playing from an honest seeder and holds nothing forged."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from streamer.core.feed import Feed
from streamer.hub import start_hub as start_hub_in_process
from streamer.hub.server import tls_context
from tests.fixtures_net import Certificates, certificates  # noqa: F401
from tests.waiting import eventually

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PY = sys.executable
PLAYS = "s => s.current_time > {t} && s.first_frame_ms !== null"


class Proc:
    """A child process of the test, its output read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    async def line(self, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise AssertionError(f"{self.name} ended without output")
        return raw.decode().strip()

    async def wait(self, timeout: float) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Proc]]]:
    procs: list[Proc] = []

    async def start(name: str, *args: str, stderr: Any = asyncio.subprocess.DEVNULL) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")},
        )
        procs.append(Proc(proc, name))
        return procs[-1]

    yield start
    for p in procs:
        if p.proc.returncode is None:
            p.proc.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await p.wait(10.0)
        except asyncio.TimeoutError:
            p.proc.kill()
            await p.proc.wait()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


async def open_tab(browser: Browser, url: str, errors: list[str]) -> Page:
    """A tab in its own browser context (no shared storage or connections with other tabs)."""
    context = await browser.new_context()
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    return page


async def stats(page: Page) -> dict[str, Any]:
    return await page.evaluate("window.swarmcast && swarmcast.stats ? swarmcast.stats() : null")


async def tab_until(page: Page, predicate: str, what: str, timeout: float = 40.0) -> dict:
    """Wait (inside the page, polling its stats) until `predicate(stats)` holds; on a timeout,
    fail with what the tab's stats said then."""
    try:
        await page.wait_for_function(
            f"window.swarmcast && swarmcast.stats && ({predicate})(swarmcast.stats())",
            timeout=timeout * 1000,
            polling=200,
        )
    except PlaywrightTimeout:
        state = await stats(page)
        said = await page.evaluate("document.getElementById('status')?.textContent")
        raise AssertionError(
            f"no {what} within {timeout:g} s; {page.url} says {said!r}; stats: {state}"
        ) from None
    result = await stats(page)
    assert result is not None, what
    return result


async def start_hub(spawn: Callable[..., Awaitable[Proc]]) -> str:
    hub = await spawn("hub", PY, "-m", "streamer", "hub", "--port", "0")
    return (await hub.line()).rsplit(" ", 1)[-1]


async def start_broadcast(
    spawn: Callable[..., Awaitable[Proc]], hub: str, feed: Path, seconds: float, *extra: str
) -> tuple[Proc, str]:
    writer = await spawn(
        "broadcaster",
        PY, "-m", "streamer", "broadcast", "test",
        "--hub", hub, "--size", "320x180", "--fps", "15", "--bitrate", "300k",
        "--duration", str(seconds), "--feed", str(feed), *extra,
        stderr=asyncio.subprocess.PIPE,
    )
    return writer, await writer.line()


def viewer_stats(url: str) -> dict:
    with urllib.request.urlopen(url + "stats", timeout=5) as resp:
        return json.loads(resp.read())


async def test_three_tabs_play_from_each_other_and_a_late_tab_outlives_the_broadcaster(
    spawn: Callable[..., Awaitable[Proc]], browser: Browser, tmp_path: Path
) -> None:
    hub = await start_hub(spawn)
    writer_stats = tmp_path / "writer.json"
    writer, key = await start_broadcast(
        spawn, hub, tmp_path / "feed", 24, "--name", "tabs-test", "--stats", str(writer_stats)
    )
    assert writer.proc.stderr is not None
    # The broadcaster prints the watch link beside the viewer command.
    link = ""
    while "/watch/" not in link:
        link = (await asyncio.wait_for(writer.proc.stderr.readline(), 30)).decode()
    assert link.strip() == f"or in a browser: {hub}/watch/tabs-test"

    errors: list[str] = []
    # By name (the tab verifies the hub's record), by key, and one with a small memory cap.
    urls = [f"{hub}/watch/tabs-test", f"{hub}/watch/{key}", f"{hub}/watch/{key}?mem=0.3"]
    tabs = [await open_tab(browser, url, errors) for url in urls]
    started = [await tab_until(t, PLAYS.format(t=0), "the tab to play") for t in tabs]
    for tab, first in zip(tabs, started, strict=True):
        later = await tab_until(
            tab, f"s => s.current_time > {first['current_time'] + 3}", "playback to advance"
        )
        assert later["live_delay_s"] is not None and later["live_delay_s"] < 10
        assert later["key"] == key and later["peers"] >= 1
    panel = await tabs[0].inner_text("#stats")  # the stats panel shows /stats' keys
    assert all(k in panel for k in ("share_from_peers", "blocks_have", "peers", "up_rate"))

    # The capped tab evicts old block values, and seeking back fetches them again from peers.
    capped = tabs[2]
    # An evicted block is one it played (so its header is known) and no longer holds; a block
    # from before it joined, or not yet backfilled, was never held.
    evicted = "[...swarmcast.player.heads.keys()].filter(i => i >= 1 && !swarmcast.held().includes(i))"
    await tab_until(
        capped,
        f"s => s.blocks_evicted > 0 && s.block_bytes_held < 600000 && {evicted}.length > 0",
        "eviction",
    )
    gone = min(await capped.evaluate(evicted))
    # Its segment header is remembered after its value was evicted: seek into its media.
    pts = await capped.evaluate(f"swarmcast.player.heads.get({gone}).pts")
    await capped.evaluate(f"swarmcast.seek({pts + 0.05})")
    # The seek lands on that block, or (format v2) on the independent part it decodes from, and
    # plays on from its time. (Not "playhead <= gone": once the blocks are back, the playhead
    # passes `gone` within a part's duration, which a poll every 0.2 s under load can miss.)
    back = await tab_until(
        capped,
        f"s => s.playhead !== null && s.playhead >= {gone - 10}"
        f" && s.current_time > {pts} && s.current_time < {pts + 3}",
        "the seek",
    )
    assert back["current_time"] < pts + 3
    await tab_until(capped, f"s => swarmcast.held().includes({gone})", "the evicted block again")

    assert await writer.wait(60) == 0
    final = [await stats(t) for t in tabs]
    for s in final:
        assert s["ended"] is True and s["peers_dropped"] == 0
        # Tabs seal their signaling and check every seal they hear.
        assert s["swarm"]["signals_checked"] > 0 and s["signals_refused"] == 0
    from_tabs = sum(s["block_bytes_from_peers"] for s in final)
    from_writer = sum(s["block_bytes_from_writer"] for s in final)
    assert from_tabs > from_writer  # most of the tabs' bytes came from other tabs
    w = json.loads(writer_stats.read_text())
    # Far below client/server's 3x. A quiet run reads about 1.3x: each block once, extra copies
    # worth 0.2 of the stream, and the framing and proofs. On a loaded machine the tabs pass
    # blocks on slowly and connect to each other late, and the writer serves more (admission.py:
    # copies asked for again and again, and every block to a tab that has no other neighbour):
    # 1.55-1.68x was seen in CI and in loops with the cores busy, `swarm_short` set, each tab
    # taking about half its blocks from the writer. The writer's counters say which rule: in six
    # runs beside a simulation, a 1.61x run answered 67 blocks to tabs that had no neighbour but
    # it yet (`writer_copies_alone`; a tab's WebRTC connections to the others come late when the
    # CPU is short) and 8 asked for again and again (`writer_copies_demanded`); the five at
    # 1.30-1.35x answered 0-29 and 5-13.
    if w["bytes_up"] > 2.0 * w["byte_length"]:
        print("WRITER", json.dumps(w))
        for s in final:
            print("TAB", json.dumps(s))
    assert w["bytes_up"] <= 2.0 * w["byte_length"], (w["bytes_up"], w["byte_length"])

    # A late tab joins after the broadcaster left and plays from the others.
    late = await open_tab(browser, f"{hub}/watch/{key}", errors)
    s = await tab_until(late, PLAYS.format(t=2), "the late tab to play")
    assert s["writer_connected"] is False and s["blocks_from_writer"] == 0
    assert s["blocks_from_peers"] >= 2 and s["ended"] is True
    assert errors == []


async def test_a_late_tab_steps_over_history_that_no_one_holds(
    spawn: Callable[..., Awaitable[Proc]], browser: Browser, tmp_path: Path
) -> None:
    hub = await start_hub(spawn)
    writer_stats = tmp_path / "writer.json"
    writer, key = await start_broadcast(
        spawn, hub, tmp_path / "feed", 14, "--linger", "5", "--stats", str(writer_stats)
    )

    def appended(blocks: int) -> bool:
        try:
            return json.loads(writer_stats.read_text())["length"] >= blocks
        except (OSError, ValueError, KeyError):
            return False

    # The only tab joins some 4 s (40 parts) in, at the live edge: it never holds the start (tabs
    # keep no history). The broadcaster lets it fetch the last parts and the end marker, waits
    # --linger 5 s more for the history no one fetches, and leaves: no one holds the start after.
    # (With --linger 0 it also leaves before the tab has the end: the tab then never sees it.)
    await eventually(lambda: appended(40), "40 blocks appended", timeout=60)
    errors: list[str] = []
    first = await open_tab(browser, f"{hub}/watch/{key}", errors)
    joined = (await tab_until(first, PLAYS.format(t=0), "the tab to play"))["join_block"]
    assert joined > 20
    assert await writer.wait(60) == 0
    await tab_until(first, "s => s.ended", "the end of the stream")
    held = await first.evaluate("swarmcast.held()")
    assert 1 not in held
    first_held = min(i for i in held if i > 0)  # block 0, the header, every peer holds

    # A late tab starts an ended stream at its beginning, which no one holds: after a few seconds
    # it steps over to the first part it can get, and plays from there.
    late = await open_tab(browser, f"{hub}/watch/{key}", errors)
    s = await tab_until(late, PLAYS.format(t=0), "the late tab to play")
    assert s["blocks_skipped"] >= first_held - 1 and s["join_block"] >= first_held
    assert s["blocks_from_writer"] == 0 and s["blocks_from_peers"] > 0
    assert "held by no peer" in await late.inner_text("#status")  # and the page says so
    assert errors == []

    # A Python viewer (no backfill) finds the same: its player server answers 410 for block 1,
    # with the block where the stream goes on, once its neighbours (the tabs) have announced.
    viewer = await spawn(
        "viewer", PY, "-m", "viewer", "watch", key, "--hub", hub, "--no-browser",
        "--port", "0", "--keep", "0", "--store", str(tmp_path / "viewer"),
    )
    url = await viewer.line()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}block/1.m4s?timeout=30") as r:
            assert r.status == 410, await r.text()
            assert int(r.headers["X-Goes-On-At"]) == first_held
        async with http.get(f"{url}block/{first_held}.m4s") as r:
            assert r.status == 200


async def test_a_tab_and_python_viewers_trade_blocks_both_ways(
    spawn: Callable[..., Awaitable[Proc]], browser: Browser, tmp_path: Path
) -> None:
    hub = await start_hub(spawn)
    writer, key = await start_broadcast(spawn, hub, tmp_path / "feed", 30)
    viewers = []
    for i in range(2):
        v = await spawn(
            f"viewer{i}", PY, "-m", "viewer", "watch", key, "--hub", hub, "--no-browser",
            "--port", "0", "--store", str(tmp_path / f"v{i}"),
        )
        viewers.append(await v.line())
    errors: list[str] = []
    tab = await open_tab(browser, f"{hub}/watch/{key}", errors)
    await tab_until(tab, PLAYS.format(t=1), "the tab to play")

    def traded(s: dict) -> bool:
        python = [n for n in s["neighbours"] if not n["is_writer"]]
        return sum(n["blocks_up"] for n in python) > 0 and sum(n["blocks_down"] for n in python) > 0

    # The tab's neighbours other than the writer are the Python viewers.
    await tab.wait_for_function(
        """() => { const s = swarmcast.stats(); const p = s.neighbours.filter(n => !n.is_writer);
        return p.reduce((a, n) => a + n.blocks_up, 0) > 0 && p.reduce((a, n) => a + n.blocks_down, 0) > 0 }""",
        timeout=40_000,
        polling=250,
    )
    s = await stats(tab)
    assert traded(s) and s["peers_dropped"] == 0
    got = [await asyncio.to_thread(viewer_stats, url) for url in viewers]
    assert sum(v["blocks_from_peers"] for v in got) > 0
    assert set(s) >= set(got[0]) - {"title", "state"}  # the tab's stats have /stats' keys
    assert errors == []
    writer.proc.send_signal(signal.SIGINT)


def flip_bytes(feed_dir: Path) -> None:
    """Flip one byte in every 512 of the data file (the tree and signatures stay intact): denser
    than the smallest part, so every block the tab asks of the forged seeder fails verification
    (with one flip per 4 KiB, 0.1 s parts of a 300 kbit/s stream, some 3.7 KB, were often intact,
    and the tab could play a while from the forger before it met a bad one)."""
    data = feed_dir / "data"
    raw = bytearray(data.read_bytes())
    for i in range(100, len(raw), 512):
        raw[i] ^= 0xFF
    data.write_bytes(bytes(raw))


async def test_a_tab_bans_a_seeder_with_flipped_bytes_and_plays_from_an_honest_one(
    spawn: Callable[..., Awaitable[Proc]], browser: Browser, tmp_path: Path
) -> None:
    hub = await start_hub(spawn)
    feed_dir = tmp_path / "feed"
    writer, key = await start_broadcast(spawn, hub, feed_dir, 8, "--fast", "--no-swarm")
    assert await writer.wait(60) == 0
    forged_dir = tmp_path / "forged"
    shutil.copytree(feed_dir, forged_dir)
    flip_bytes(forged_dir)
    # The forged seeder is the only one at first, so the tab must ask it (and ban it); the
    # honest one comes next, and the tab plays from it.
    forged = await spawn("forged", PY, "-m", "viewer", "seed", str(forged_dir), "--hub", hub)
    assert await forged.line() == key

    errors: list[str] = []
    tab = await open_tab(browser, f"{hub}/watch/{key}", errors)
    s = await tab_until(tab, "s => s.banned >= 1 && s.peers_dropped >= 1", "the ban", 40)
    honest = await spawn("honest", PY, "-m", "viewer", "seed", str(feed_dir), "--hub", hub)
    assert await honest.line() == key
    s = await tab_until(tab, PLAYS.format(t=2), "playback from the honest seeder", 40)
    assert s["peers"] == 1
    events = await tab.evaluate("swarmcast.events")
    assert any(e["type"] == "misbehaved" for e in events)

    feed = Feed.open(feed_dir, key=bytes.fromhex(key))
    try:
        truth = {i: hashlib.blake2b(feed.get(i), digest_size=32).hexdigest() for i in range(feed.length)}
    finally:
        feed.close()
    held = await tab.evaluate("swarmcast.digests()")
    assert held and all(truth[int(i)] == d for i, d in held.items())  # nothing forged is held
    assert errors == []


async def test_the_watch_page_over_plain_http_elsewhere_says_why_it_cannot_verify(
    spawn: Callable[..., Awaitable[Proc]],
) -> None:
    hub = await start_hub(spawn)
    port = hub.rsplit(":", 1)[1]
    host = "tab-test.invalid"
    b = await async_playwright().start()
    try:
        # Another name for 127.0.0.1: plain http there is not a secure context.
        other = await b.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {host} 127.0.0.1"],
        )
        page = await (await other.new_context()).new_page()
        await page.goto(f"http://{host}:{port}/watch/{'ab' * 32}")
        await page.wait_for_function("window.swarmcast && swarmcast.problem", timeout=15_000)
        text = await page.evaluate("swarmcast.problem")
        assert "secure context" in text and "https" in text and "localhost" in text
        assert "--tls-cert" in text
        await other.close()
    finally:
        await b.stop()
    # Not a name nor a key: the hub says what to open.
    with pytest.raises(urllib.error.HTTPError) as err:
        await asyncio.to_thread(urllib.request.urlopen, f"{hub}/watch/NOT%20A%20NAME", timeout=5)
    assert err.value.code == 404
    assert re.search(r"stream name or its 64-hex-digit key", err.value.read().decode())


async def test_the_hub_serves_the_watch_page_and_only_the_web_modules() -> None:
    server = await start_hub_in_process()
    try:
        async with aiohttp.ClientSession() as s:
            for target in ("my-stream", "ab" * 32):
                async with s.get(f"{server.url}/watch/{target}") as r:
                    assert r.status == 200 and r.content_type == "text/html"
                    assert '<script type="module" src="/web/watch.js">' in await r.text()
            for name, kind in (("watch.js", "text/javascript"), ("membership.js", "text/javascript"),
                               ("watch.css", "text/css")):
                async with s.get(f"{server.url}/web/{name}") as r:
                    assert r.status == 200 and r.content_type == kind, name
            for bad in ("/web/..%2Fhub%2Fapp.py", "/web/package.json", "/web/nope.js",
                        "/watch/Not-A-Name", "/watch/" + "ab" * 33):
                async with s.get(server.url + bad) as r:
                    assert r.status == 404, bad
                    assert "error" in await r.json()
    finally:
        await server.stop()


async def test_the_watch_page_over_https_on_another_name_is_a_secure_context(
    certificates: Certificates,  # noqa: F811
) -> None:
    """`streamer hub --tls-cert/--tls-key`: the page served over https on a name other than
    localhost can verify (WebCrypto is there) and subscribes to the hub over TLS."""
    server = await start_hub_in_process(
        ssl_context=tls_context(certificates.cert, certificates.key)
    )
    port = server.url.rsplit(":", 1)[1]
    host = "tls-tab.invalid"
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=CHROMIUM,
                args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {host} 127.0.0.1"],
            )
            # The test CA is not in Chromium's store; the name is not the certificate's either.
            context = await browser.new_context(ignore_https_errors=True)
            page = await context.new_page()
            await page.goto(f"https://{host}:{port}/watch/{'ab' * 32}")
            await page.wait_for_function("window.swarmcast && swarmcast.swarm", timeout=15_000)
            assert await page.evaluate("isSecureContext && !swarmcast.problem")
            await eventually(lambda: len(server.hub.subscribers) == 1, "the tab's SSE over TLS")
            await browser.close()
    finally:
        await server.stop()
