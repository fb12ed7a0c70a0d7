"""The tab's protocol core in Debian's headless Chromium, served as plain ES modules over HTTP:
WebAssembly BLAKE2b, WebCrypto Ed25519 on the reference proofs, forged proofs refused, two in-page
peers replicating; and on a non-secure origin the page learns exactly why it cannot verify."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-component-update"]
PAGE = """<!doctype html><meta charset="utf-8"><title>check</title>
<script type="module">
import { run } from '/check.mjs'
run().then((r) => { window.report = r }, (e) => { window.report = { error: String(e && e.stack || e) } })
</script>"""


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def check(_: web.Request) -> web.FileResponse:
        return web.FileResponse(ROOT / "tests" / "js" / "browser_check.mjs")

    async def vectors(_: web.Request) -> web.FileResponse:
        return web.FileResponse(ROOT / "tests" / "data" / "hypercore-vectors.json")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/check.mjs", check)
    app.router.add_get("/vectors.json", vectors)
    app.router.add_static("/web/", ROOT / "streamer" / "web")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def report_of(url: str, args: list[str]) -> dict:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *args])
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(url)
            await page.wait_for_function("window.report !== undefined", timeout=30_000)
            report = await page.evaluate("window.report")
            assert errors == []
            return report
        finally:
            await browser.close()


async def test_modules_verify_the_reference_proofs_and_replicate_in_chromium(server: str) -> None:
    report = await report_of(server + "/", [])
    assert "error" not in report, report.get("error")
    assert report["secure"] is True and report["unavailable"] is None
    assert report["backend"] == "wasm"
    assert report["abc"].startswith("ba80a53f981c4d0d")
    assert report["leaves"] is True
    assert len(report["proofs"]) == 7
    for name, result in report["proofs"].items():
        assert result == {"genuine": True, "forged": "ProofError"}, name
    assert report["replicated"] == list(range(8)) and report["replicatedIntact"] is True


async def test_a_plain_http_origin_is_told_why_it_cannot_verify(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    # A name that is not localhost makes plain http a non-secure context: no WebCrypto.
    rules = "--host-resolver-rules=MAP swarmcast.test 127.0.0.1"
    report = await report_of(f"http://swarmcast.test:{port}/", [rules])
    assert report["secure"] is False
    assert "secure context" in report["unavailable"] and "https" in report["unavailable"]
    assert report["backend"] == "wasm" and report["abc"].startswith("ba80a53f981c4d0d")
    assert "proofs" not in report
