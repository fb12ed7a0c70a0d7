"""Hub fan-out benchmark: messages per second delivered to many SSE subscribers.

Usage: python3 bench/bench_hub.py [--subscribers 1000] [--messages 200] [--rounds 3] [--no-node]
Each server runs in its own process, the subscribers in another, the publisher in this one. The
baselines, measured in the same run under the same load: a raw aiohttp SSE fan-out with no limits
or validation, and (when npm is available) the npm `signalhub` server itself. Measures only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import shutil
import statistics
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from streamer.hub import HubConfig, start_hub  # noqa: E402
from tests.fixtures_redis import free_port  # noqa: E402

SIGNALHUB_DIR = HERE / "out" / "signalhub"
CHANNEL = "/v1/bench/fanout"
# Limits opened up so the benchmark measures fan-out, not the per-client-IP protections (every
# subscriber here comes from 127.0.0.1).
BENCH_CONFIG = HubConfig(
    max_subscribers_per_channel=100_000,
    rate_per_second=1e9,
    rate_burst=1e9,
    heartbeat_seconds=3600,
)
CONNECT_BATCH = 100
TIMEOUT = 120.0


def run_loop(coro) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


# -- servers (each in its own process) ----------------------------------------------------------


def baseline_app() -> web.Application:
    """The simplest aiohttp SSE fan-out: no validation, no limits, no queues."""
    subscribers: list[web.StreamResponse] = []

    async def get(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        subscribers.append(response)
        try:
            await asyncio.Event().wait()
        finally:
            subscribers.remove(response)
        return response

    async def post(request: web.Request) -> web.Response:
        frame = b"data: " + await request.read() + b"\n\n"
        for response in list(subscribers):
            await response.write(frame)
        return web.Response()

    app = web.Application()
    app.router.add_get(CHANNEL, get)
    app.router.add_post(CHANNEL, post)
    return app


def serve(kind: str, port: int, conn: Connection) -> None:
    async def main() -> None:
        if kind == "hub":
            server = await start_hub(port=port, config=BENCH_CONFIG)
            stop = server.stop
        else:
            runner = web.AppRunner(baseline_app(), handler_cancellation=True, shutdown_timeout=0.5)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            stop = runner.cleanup
        conn.send("listening")
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await stop()

    run_loop(main())


def start_node_signalhub(port: int) -> subprocess.Popen[bytes] | None:
    """npm signalhub (installed once into bench/out/signalhub), or None without npm."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        return None
    modules = SIGNALHUB_DIR / "node_modules"
    if not (modules / "signalhub" / "package.json").exists():
        SIGNALHUB_DIR.mkdir(parents=True, exist_ok=True)
        (SIGNALHUB_DIR / "package.json").write_text('{"private": true}\n')
        print("installing the reference (npm install signalhub@4) ...", flush=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", "signalhub@4"],
            cwd=SIGNALHUB_DIR, check=True,
        )
    script = (
        f"require({json.dumps(str(modules / 'signalhub' / 'server'))})()"
        f".listen({port}, '127.0.0.1', () => console.log('listening'))"
    )
    process = subprocess.Popen(["node", "-e", script], stdout=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.readline()
    return process


# -- subscribers (one process) ------------------------------------------------------------------


def subscribe(url: str, count: int, expected: int, conn: Connection) -> None:
    """Open `count` SSE streams, say ready, then report (time of last delivery, deliveries)."""

    async def main() -> None:
        newlines = 0
        last = 0.0
        done = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            responses: list[aiohttp.ClientResponse] = []
            for start in range(0, count, CONNECT_BATCH):
                batch = range(start, min(start + CONNECT_BATCH, count))
                responses += await asyncio.gather(*(session.get(url) for _ in batch))
            assert all(r.status == 200 for r in responses), [r.status for r in responses][:5]

            async def read(response: aiohttp.ClientResponse) -> None:
                nonlocal newlines, last
                # Every frame is one `data:` line plus a blank line: two newlines per message.
                async for chunk in response.content.iter_any():
                    newlines += chunk.count(b"\n")
                    last = time.monotonic()
                    if newlines >= 2 * expected:
                        done.set()

            readers = [asyncio.create_task(read(r)) for r in responses]
            conn.send("ready")
            try:
                await asyncio.wait_for(done.wait(), TIMEOUT)
            except asyncio.TimeoutError:
                pass
            conn.send((last, newlines // 2))
            for task in readers:
                task.cancel()
            for response in responses:
                response.close()

    run_loop(main())


# -- one measurement ----------------------------------------------------------------------------


async def publish(url: str, messages: int) -> float:
    """POST the messages (a few in flight at once); returns the start time."""
    body = json.dumps({"type": "offer", "from": "a" * 16, "sdp": "v=0 " + "x" * 160}).encode()
    async with aiohttp.ClientSession() as session:
        sent = 0
        start = time.monotonic()

        async def worker() -> None:
            nonlocal sent
            while sent < messages:
                sent += 1
                async with session.post(url, data=body) as resp:
                    assert resp.status == 200, resp.status

        await asyncio.gather(*(worker() for _ in range(4)))
        return start


def measure(kind: str, subscribers: int, messages: int) -> tuple[float, int]:
    """Delivered messages per second for one server kind, and how many were delivered."""
    ctx = mp.get_context("spawn")
    port = free_port()
    url = f"http://127.0.0.1:{port}{CHANNEL}"
    server_proc: mp.process.BaseProcess | None = None
    node: subprocess.Popen[bytes] | None = None
    control, server_end = ctx.Pipe()
    if kind == "signalhub":
        node = start_node_signalhub(port)
    else:
        server_proc = ctx.Process(target=serve, args=(kind, port, server_end))
        server_proc.start()
        control.recv()
    results, subscriber_end = ctx.Pipe()
    subscriber_proc = ctx.Process(
        target=subscribe, args=(url, subscribers, subscribers * messages, subscriber_end)
    )
    subscriber_proc.start()
    try:
        results.recv()
        start = asyncio.run(publish(url, messages))
        last, delivered = results.recv()
        return delivered / max(last - start, 1e-9), delivered
    finally:
        subscriber_proc.join(timeout=30)
        if server_proc is not None:
            control.send("stop")
            server_proc.join(timeout=30)
        if node is not None:
            node.terminate()
            node.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-node", action="store_true", help="skip the npm signalhub baseline")
    args = parser.parse_args()
    kinds = ["baseline", "hub"]
    if not args.no_node and shutil.which("npm") and shutil.which("node"):
        kinds.append("signalhub")
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    expected = args.subscribers * args.messages
    print(f"fan-out: {args.messages} messages to {args.subscribers} SSE subscribers, "
          f"{args.rounds} rounds (median shown)")
    for round_no in range(args.rounds):
        for kind in kinds:
            rate, delivered = measure(kind, args.subscribers, args.messages)
            note = "" if delivered == expected else f"  (only {delivered}/{expected} delivered)"
            print(f"  round {round_no + 1} {kind:<10} {rate:>12,.0f} msgs/s{note}", flush=True)
            rates[kind].append(rate)
    median = {k: statistics.median(v) for k, v in rates.items()}
    print()
    print(f"{'server':<34}{'delivered msgs/s':>18}{'ratio to ours':>16}")
    labels = {
        "hub": "swarmcast hub (limits, validation)",
        "baseline": "raw aiohttp SSE fan-out",
        "signalhub": "npm signalhub 4 (node)",
    }
    for kind in kinds:
        ratio = median["hub"] / median[kind]
        print(f"{labels[kind]:<34}{median[kind]:>18,.0f}{ratio:>15.2f}x")


if __name__ == "__main__":
    main()
