"""Proof verification in the tab's JavaScript (streamer/web, run in node) beside Python's, same run.

The workload mirrors bench_merkle.py: a 10,000-block feed (1,000 for blocks over 4 KiB); proofs of one block plus an upgrade from
an empty reader (a leaf hash, the climb and one Ed25519 check each), and block-only proofs applied
to a sparse reader (hashes only: how a tab takes most blocks). Python (hashlib + libsodium) builds
every proof once; both sides verify the same bytes. Target for the tab: >= 2,000 proofs/s.
The two sides take turns for --rounds rounds and each figure is the best round (the machine is
shared, so the least disturbed round is the fairest comparison).
With --browser the tab's side also runs in headless Chromium (/usr/bin/chromium, through
playwright), the same code as a page on 127.0.0.1.
Usage: python3 bench/bench_js_verify.py [--quick] [--block-size BYTES] [--rounds N] [--browser]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from streamer.core import crypto, wire
from streamer.core.merkle import CompatVerifier, MemoryNodeStore, MerkleTree

HERE = Path(__file__).resolve().parent


def blocks_of(count: int, size: int) -> list[bytes]:
    return [struct.pack("<I", i) + bytes(size - 4) for i in range(count)]


def write(path: Path, messages: list[bytes]) -> None:
    with path.open("wb") as f:
        for m in messages:
            f.write(struct.pack("<I", len(m)) + m)


PAGE = """<!doctype html><meta charset="utf-8"><script type="module">
import { measure, messages } from '/bench/js_verify_core.mjs'
const hex = (s) => Uint8Array.from(s.match(/../g) || [], (b) => parseInt(b, 16))
const get = async (name) => messages(new Uint8Array(await (await fetch('/work/' + name)).arrayBuffer()))
const q = new URLSearchParams(location.search)
const run = async () => measure({
  verifyRaw: await get('verify.bin'), firstRaw: (await get('first.bin'))[0],
  applyRaw: await get('apply.bin'), key: hex(q.get('key')), msg: hex(q.get('msg')), sig: hex(q.get('sig')),
})
run().then((r) => { window.rates = r }, (e) => { window.rates = { error: String(e) } })
</script>"""


async def in_chromium(work: Path, key: bytes, msg: bytes, sig: bytes) -> dict[str, float]:
    """The same measurement as a page served from 127.0.0.1 (a secure context) in Chromium."""
    from aiohttp import web
    from playwright.async_api import async_playwright

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_static("/work/", work)
    app.router.add_static("/bench/", HERE)
    app.router.add_static("/streamer/web/", HERE.parent / "streamer" / "web")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
            )
            tab = await browser.new_page()
            await tab.goto(
                f"http://127.0.0.1:{port}/?key={key.hex()}&msg={msg.hex()}&sig={sig.hex()}"
            )
            await tab.wait_for_function("window.rates !== undefined", timeout=600_000)
            rates = await tab.evaluate("window.rates")
            await browser.close()
    finally:
        await runner.cleanup()
    if "error" in rates:
        raise RuntimeError(f"the page failed: {rates['error']}")
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    ap.add_argument("--block-size", type=int, default=1024, help="bytes per block (default 1024)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--browser", action="store_true", help="also measure in headless Chromium")
    args = ap.parse_args()
    size = args.block_size
    count = 10_000 if size <= 4096 else 1_000  # keeps the feed in memory under ~64 MiB per 64 KiB
    samples = 1000 if args.quick else 5000
    if size * samples > 256 << 20:
        samples = max(100, (256 << 20) // size)
    kp = crypto.key_pair(bytes([7]) * 32)
    blocks = blocks_of(count, size)
    store = MemoryNodeStore()
    writer = MerkleTree(store, CompatVerifier(kp.public_key))
    for i in range(0, count, 256):
        batch = writer.append(blocks[i : i + 256], kp.secret_key)
        store.put(batch.nodes)
        writer.commit(batch)

    def proof(index: int, nodes: int, upgrade: bool) -> wire.Data:
        up = wire.RequestUpgrade(0, count) if upgrade else None
        data = writer.proof(wire.Request(1, 0, block=wire.RequestBlock(index, nodes), upgrade=up))
        assert data.block is not None
        data.block.value = blocks[index]
        return data

    picks = [(i * 7919) % count for i in range(samples)]
    verify = [proof(i, 0, True) for i in picks]
    first = proof(0, 0, True)
    reader_store = MemoryNodeStore()
    reader = MerkleTree(reader_store, writer.verifier)
    batch = reader.verify(first)
    reader_store.put(batch.nodes)
    reader.commit(batch)
    applies = [proof(i, reader.missing_nodes(i), False) for i in picks if i != 0]
    msg = b"x" * 80
    sig = crypto.sign(msg, kp.secret_key)

    def python_round() -> dict[str, float]:
        out: dict[str, float] = {}
        t0 = time.perf_counter()
        for data in verify:
            MerkleTree(MemoryNodeStore(), writer.verifier).verify(data)
        out["proof_verify"] = samples / (time.perf_counter() - t0)
        store = MemoryNodeStore()
        tree = MerkleTree(store, writer.verifier)
        batch = tree.verify(first)
        store.put(batch.nodes)
        tree.commit(batch)
        t0 = time.perf_counter()
        for data in applies:
            store.put(tree.verify(data).nodes)
        out["proof_apply"] = len(applies) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(2000):
            crypto.verify(msg, sig, kp.public_key)
        out["ed25519_verify"] = 2000 / (time.perf_counter() - t0)
        block = bytes(range(256)) * 256
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 1.0:
            hashlib.blake2b(block, digest_size=32).digest()
            n += 1
        out["blake2b_mb_s"] = n * len(block) / 1e6 / (time.perf_counter() - t0)
        return out

    node = shutil.which("node")
    if node is None:
        print("node is missing: install nodejs")
        return 1
    ours: dict[str, float] = {}
    tab: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as work:
        write(Path(work) / "verify.bin", [wire.encode_message(d) for d in verify])
        write(Path(work) / "first.bin", [wire.encode_message(first)])
        write(Path(work) / "apply.bin", [wire.encode_message(d) for d in applies])
        command = [
            node,
            str(HERE / "bench_js_verify.mjs"),
            work,
            kp.public_key.hex(),
            msg.hex(),
            sig.hex(),
        ]
        for _ in range(args.rounds):
            for name, rate in python_round().items():
                ours[name] = max(ours.get(name, 0.0), rate)
            run = subprocess.run(command, capture_output=True, text=True, timeout=1200)
            if run.returncode != 0:
                print(f"bench_js_verify.mjs failed: {run.stderr.strip()[-2000:]}")
                return 1
            for name, rate in json.loads(run.stdout).items():
                tab[name] = max(tab.get(name, 0.0), rate)
        chromium: dict[str, float] = {}
        if args.browser:
            for _ in range(args.rounds):
                rates = asyncio.run(in_chromium(Path(work), kp.public_key, msg, sig))
                for name, rate in rates.items():
                    chromium[name] = max(chromium.get(name, 0.0), rate)
    params = {"blocks": count, "block_size": size, "samples": samples, "rounds": args.rounds}
    print(f"params: {json.dumps(params)} (best round of each)")
    print(f"{'figure (per second)':<26}{'node':>10}{'chromium':>10}{'Python':>10}{'node/Py':>9}")
    for name in (
        "proof_verify",
        "proof_verify_concurrent",
        "proof_apply",
        "ed25519_verify",
        "blake2b_mb_s",
    ):
        js_rate = tab.get(name)
        py = ours.get(name if name != "proof_verify_concurrent" else "proof_verify")
        ratio = f"{js_rate / py:.2f}x" if js_rate and py else "-"
        crm = f"{chromium[name]:,.0f}" if name in chromium else "-"
        print(f"{name:<26}{js_rate or 0:>10,.0f}{crm:>10}{py or 0:>10,.0f}{ratio:>9}")
    print(
        f"node {subprocess.run([node, '--version'], capture_output=True, text=True).stdout.strip()}; "
        "target for the tab: proof_verify >= 2,000/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
