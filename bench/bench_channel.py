"""Throughput of our MessageChannel (streamer.net.rtc) against a raw aiortc data channel.

Both run in the same layout: the sender in this process, the receiver in a child process, SDP
exchanged over a pipe, 64 KiB messages, the raw sender using the bufferedAmountLowThreshold
pattern of aiortc's datachannel-filexfer example with the same watermarks. Runs alternate; the
median of each is printed with the ratio (ours / raw). Usage: python3 bench/bench_channel.py
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time
from multiprocessing.connection import Connection

from aiortc import RTCPeerConnection, RTCSessionDescription

from streamer.net.loop import run
from streamer.net.rtc import HIGH_WATER, LOW_WATER, RtcPeer

MESSAGE = 64 * 1024


async def _pipe_recv(conn: Connection) -> object:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


async def _receive(conn: Connection, mode: str, total: int) -> None:
    offer = await _pipe_recv(conn)
    assert isinstance(offer, str)
    done = asyncio.get_running_loop().create_future()
    if mode == "raw":
        pc = RTCPeerConnection()
        received = 0
        cpu_start = 0.0

        @pc.on("datachannel")
        def on_channel(dc) -> None:
            @dc.on("message")
            def on_message(message: bytes) -> None:
                nonlocal received, cpu_start
                if not received:
                    cpu_start = time.process_time()
                received += len(message)
                if received >= total and not done.done():
                    done.set_result(None)

        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        conn.send(pc.localDescription.sdp)
        await done
        conn.send(time.process_time() - cpu_start)
        await _pipe_recv(conn)
        await pc.close()
    else:
        peer = RtcPeer("sender", initiator=False)
        conn.send(await peer.answer(offer))
        channel = await peer.channel()
        received = len(await channel.recv())
        cpu_start = time.process_time()
        while received < total:
            received += len(await channel.recv())
        conn.send(time.process_time() - cpu_start)
        await _pipe_recv(conn)
        await peer.close()


def _receiver_main(conn: Connection, mode: str, total: int, uvloop: bool) -> None:
    coro = _receive(conn, mode, total)
    if uvloop:
        run(coro)
    else:
        asyncio.run(coro)


async def _send(conn: Connection, mode: str, total: int) -> tuple[float, float]:
    """(MB/s, CPU seconds per MB over both processes)."""
    payload = b"\x5a" * MESSAGE
    count = total // MESSAGE
    if mode == "raw":
        pc = RTCPeerConnection()
        dc = pc.createDataChannel("bench", ordered=True)
        opened = asyncio.Event()
        low = asyncio.Event()
        dc.on("open", opened.set)
        dc.on("bufferedamountlow", low.set)
        dc.bufferedAmountLowThreshold = LOW_WATER
        await pc.setLocalDescription(await pc.createOffer())
        conn.send(pc.localDescription.sdp)
        answer = await _pipe_recv(conn)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await opened.wait()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            if dc.bufferedAmount > HIGH_WATER:
                low.clear()
                await low.wait()
            dc.send(payload)
        receiver_cpu = await _pipe_recv(conn)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        conn.send("bye")
        await pc.close()
    else:
        peer = RtcPeer("receiver", initiator=True)
        conn.send(await peer.offer())
        await peer.accept(await _pipe_recv(conn))
        channel = await peer.channel()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            await channel.send(payload)
        receiver_cpu = await _pipe_recv(conn)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        conn.send("bye")
        await peer.close()
    megabytes = count * MESSAGE / 1e6
    assert isinstance(receiver_cpu, float)
    return megabytes / elapsed, (cpu + receiver_cpu) / megabytes


def _one_run(mode: str, total: int, uvloop: bool) -> tuple[float, float]:
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(
        target=_receiver_main, args=(child, mode, total // MESSAGE * MESSAGE, uvloop)
    )
    proc.start()
    try:
        coro = _send(parent, mode, total)
        return run(coro) if uvloop else asyncio.run(coro)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="megabytes per run (default 50)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = parser.parse_args()
    total = int(args.mb * 1e6)
    uvloop = not args.no_uvloop
    speed: dict[str, list[float]] = {"raw": [], "ours": []}
    cost: dict[str, list[float]] = {"raw": [], "ours": []}
    for i in range(args.runs):
        for mode in ("raw", "ours"):
            mbps, cpu_per_mb = _one_run(mode, total, uvloop)
            speed[mode].append(mbps)
            cost[mode].append(cpu_per_mb)
            print(f"run {i + 1} {mode:4}: {mbps:6.1f} MB/s  {cpu_per_mb * 1000:5.1f} ms CPU/MB",
                  flush=True)
    raw, ours = statistics.median(speed["raw"]), statistics.median(speed["ours"])
    raw_cpu, ours_cpu = statistics.median(cost["raw"]), statistics.median(cost["ours"])
    loop_name = "uvloop" if uvloop else "asyncio"
    print(f"\n64 KiB messages, {args.mb:.0f} MB, two processes, {loop_name}, median of {args.runs}")
    print(f"raw aiortc data channel : {raw:6.1f} MB/s  {raw_cpu * 1000:5.1f} ms CPU/MB  (baseline)")
    print(f"MessageChannel (rtc.py) : {ours:6.1f} MB/s  {ours_cpu * 1000:5.1f} ms CPU/MB")
    print(f"ratio ours / raw        : {ours / raw:6.2f} throughput (target >= 0.9), "
          f"{ours_cpu / raw_cpu:.2f} CPU per MB (both processes)")


if __name__ == "__main__":
    main()
