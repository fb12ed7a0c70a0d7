"""Connections across NATs, in the namespace lab of tests/netlab.py (needs root, coturn,
nftables): for each pair of NAT types (public = no NAT, eim = endpoint-independent NAT, sym =
symmetric NAT), a writer node and a reader node, each a process in its own namespace, meet on a
hub on the lab's public machine, with STUN only ("direct") and with STUN + coturn ("turn").

Prints, per pair and mode: connection success rate, time from Swarm.join() to the first verified
neighbour (p50), the route ICE chose, and the round trip of a 64-byte message over the channel
(p50), beside the same-run baseline (two public hosts, STUN only); the relay's extra delay is
the relayed round trip minus the baseline's.
Usage: sudo .venv/bin/python bench/bench_nat.py [--trials 3] [--pairs public-sym,sym-sym]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streamer.core import crypto  # noqa: E402
from streamer.net.ice import selected_route  # noqa: E402
from streamer.net.loop import run  # noqa: E402
from streamer.net.swarm import Swarm  # noqa: E402

KINDS = ("public", "eim", "sym")
PAIRS = [(a, b) for i, a in enumerate(KINDS) for b in KINDS[i:]]
CONNECT_TIMEOUT_S = 25.0
PINGS = 30


# -- one node, run inside a namespace ----------------------------------------------------------


async def _writer(hub: str, secret_hex: str) -> None:
    secret = bytes.fromhex(secret_hex)
    key = secret[32:]
    swarm = Swarm(crypto.discovery_key(key), key, [hub], writer_secret_key=secret,
                  announce_interval=2.0)

    async def echo(conn) -> None:  # type: ignore[no-untyped-def]
        try:
            while True:
                await conn.send(await conn.recv())
        except Exception:  # the reader left
            return

    async with swarm:
        print("ready", flush=True)
        async for conn in swarm.connections():
            asyncio.ensure_future(echo(conn))


async def _reader(hub: str, key_hex: str) -> None:
    key = bytes.fromhex(key_hex)
    swarm = Swarm(crypto.discovery_key(key), key, [hub], announce_interval=2.0)
    start = time.perf_counter()
    result: dict = {"ok": False}
    async with swarm:
        try:
            conn = await asyncio.wait_for(anext(aiter(swarm.connections())), CONNECT_TIMEOUT_S)
        except asyncio.TimeoutError:
            print(json.dumps(result), flush=True)
            return
        result["ok"] = True
        result["connect_s"] = time.perf_counter() - start
        route = selected_route(conn._pc)  # type: ignore[attr-defined]
        result["route"] = f"{route.local_type}-{route.remote_type}" if route else "?"
        result["relayed"] = bool(route and route.relayed)
        rtts = []
        for _ in range(PINGS):
            sent = time.perf_counter()
            await conn.send(b"p" * 64)
            await conn.recv()
            rtts.append(time.perf_counter() - sent)
        result["rtt_ms"] = statistics.median(rtts) * 1000
    print(json.dumps(result), flush=True)


# -- the lab -------------------------------------------------------------------------------------


async def _trial(lab, a: str, b: str, mode: str, n: int) -> dict:  # type: ignore[no-untyped-def]
    pair = crypto.key_pair()
    env = {"SWARMCAST_ICE_SERVERS": lab.ice(mode)}
    wh = lab.add_host(f"w{n}", a)
    rh = lab.add_host(f"r{n}", b)
    me = str(ROOT / "bench" / "bench_nat.py")
    writer = await lab.spawn(
        wh, f"w{n}", sys.executable, me, "node-writer", lab.hub_url, pair.secret_key.hex(), env=env
    )
    try:
        await writer.line()
        reader = await lab.spawn(
            rh, f"r{n}", sys.executable, me, "node-reader", lab.hub_url, pair.public_key.hex(),
            env=env,
        )
        try:
            return json.loads(await reader.line(CONNECT_TIMEOUT_S + 30))
        finally:
            await lab.stop(reader)
    finally:
        await lab.stop(writer)


def _fmt(results: list[dict]) -> tuple[str, float | None, float | None, str]:
    ok = [r for r in results if r["ok"]]
    rate = f"{len(ok)}/{len(results)}"
    connect = statistics.median(r["connect_s"] for r in ok) if ok else None
    rtt = statistics.median(r["rtt_ms"] for r in ok) if ok else None
    routes = ",".join(sorted({r["route"] for r in ok})) or "-"
    return rate, connect, rtt, routes


async def _bench(trials: int, pairs: list[tuple[str, str]]) -> None:
    from tests.netlab import nat_lab

    with tempfile.TemporaryDirectory(prefix="bench-nat-") as tmp:
        async with nat_lab(Path(tmp)) as lab:
            await lab.start_redis()
            await lab.start_turn()
            await lab.start_hub()
            n = 0
            table: dict[tuple[str, str, str], list[dict]] = {}
            for a, b in [("public", "public"), *[p for p in pairs if p != ("public", "public")]]:
                for mode in ("direct", "turn"):
                    results = []
                    for _ in range(trials):
                        n += 1
                        results.append(await _trial(lab, a, b, "stun" if mode == "direct" else "turn", n))
                    table[(a, b, mode)] = results
                    rate, connect, rtt, routes = _fmt(results)
                    print(
                        f"{a:>6}-{b:<6} {mode:<6}  success {rate:>5}  first neighbour p50 "
                        f"{'-' if connect is None else f'{connect:5.2f} s'}  rtt p50 "
                        f"{'-' if rtt is None else f'{rtt:6.2f} ms'}  route {routes}",
                        flush=True,
                    )
            _, base_connect, base_rtt, _ = _fmt(table[("public", "public", "direct")])
            print(f"\nbaseline (public-public, STUN only): first neighbour p50 {base_connect:.2f} s, "
                  f"rtt p50 {base_rtt:.2f} ms")
            relayed = [r for rs in table.values() for r in rs if r["ok"] and r["relayed"]]
            if relayed and base_rtt is not None:
                extra = statistics.median(r["rtt_ms"] for r in relayed) - base_rtt
                print(f"relay's extra round-trip delay (p50 of {len(relayed)} relayed "
                      f"connections minus baseline): {extra:+.2f} ms")
            else:
                print("no connection was relayed")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "node-writer":
        run(_writer(sys.argv[2], sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "node-reader":
        run(_reader(sys.argv[2], sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--pairs", default=",".join(f"{a}-{b}" for a, b in PAIRS),
                        help="comma-separated writer-reader NAT type pairs")
    args = parser.parse_args()
    pairs = [tuple(p.split("-")) for p in args.pairs.split(",") if p]
    for p in pairs:
        if len(p) != 2 or not set(p) <= set(KINDS):
            parser.error(f"a pair is two of {', '.join(KINDS)} joined by '-', not {'-'.join(p)!r}")
    asyncio.run(_bench(args.trials, pairs))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
