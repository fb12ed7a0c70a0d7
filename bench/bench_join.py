"""Join time: from Swarm.join() to the first verified neighbour (data channel open, handshake
done), for peers joining one after another a swarm on one in-process hub.

Baseline in the same run: a bare aiortc connection (offer -> data channel open on both sides)
with the SDP handed over in memory, no hub and no handshake. Prints p50/p95 of each and the ratio.
Usage: python3 bench/bench_join.py [--peers 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from benchutil import percentile

from streamer.core import crypto
from streamer.hub import HubConfig, start_hub
from streamer.net.channel import MessageChannel
from streamer.net.loop import run
from streamer.net.rtc import RtcPeer
from streamer.net.swarm import Swarm


async def _bare_setup() -> float:
    start = time.perf_counter()
    offerer = RtcPeer("b", initiator=True, ice_servers=[])
    answerer = RtcPeer("a", initiator=False, ice_servers=[])
    await offerer.accept(await answerer.answer(await offerer.offer()))
    await asyncio.gather(offerer.channel(), answerer.channel())
    elapsed = time.perf_counter() - start
    await asyncio.gather(offerer.close(), answerer.close())
    return elapsed


async def _join_round(hub_url: str, peers: int) -> list[float]:
    writer = crypto.key_pair()
    topic = crypto.discovery_key(writer.public_key)
    swarms: list[Swarm] = []
    times: list[float] = []
    try:
        for i in range(peers):
            swarm = Swarm(
                topic, writer.public_key, [hub_url], ice_servers=[],
                writer_secret_key=writer.secret_key if i == 0 else None,
            )
            swarms.append(swarm)
            first: asyncio.Future[MessageChannel] = asyncio.get_running_loop().create_future()
            swarm.on_connection(lambda c, f=first: f.done() or f.set_result(c))
            start = time.perf_counter()
            await swarm.join()
            if i == 0:
                continue  # nobody to meet yet
            await asyncio.wait_for(first, 30)
            times.append(time.perf_counter() - start)
    finally:
        await asyncio.gather(*(s.leave() for s in swarms))
    return times


async def main(peers: int, rounds: int) -> None:
    hub = await start_hub(config=HubConfig(rate_per_second=10_000, rate_burst=10_000))
    try:
        joins: list[float] = []
        for _ in range(rounds):
            joins += await _join_round(hub.url, peers)
        bare = [await _bare_setup() for _ in range(len(joins))]
    finally:
        await hub.stop()
    print(f"{rounds} rounds of {peers} peers joining one after another, one hub, one process")
    for name, values in (("bare aiortc connection (baseline)", bare), ("swarm join -> first verified neighbour", joins)):
        print(f"{name:40}: p50 {percentile(values, 0.5) * 1000:6.1f} ms  p95 {percentile(values, 0.95) * 1000:6.1f} ms"
              f"  (n={len(values)})")
    print(f"ratio join / bare p50: {statistics.median(joins) / statistics.median(bare):.1f}x "
          "(the difference: hub round trips, the handshake, making room when all are full)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run(main(args.peers, args.rounds))
