"""Replication throughput over one real aiortc data channel beside a raw aiortc data channel moving
the same bytes in the same run.

The writer (a Feed of --mb MB in --block-size blocks (64 KiB; a 0.2 s part of an 800 kbit/s
stream is 20 KB), served by NetworkReplicator) runs in this process; it is opened without its
secret key, so it serves as a viewer serves history (upload admission's max_queued_history);
the reader (a sparse Feed fetching everything, archive mode, verifying and storing each block) in
a child process; SDP goes over a pipe. The raw run sends the same number of --block-size
messages with aiortc's bufferedAmountLowThreshold pattern. Both on uvloop, timed from channel open
to the receiver holding the last byte. Prints MB/s of each and the ratio (target >= 0.8), and the CPU
seconds per MB both processes used (user + system, from the OS), raw beside replication.
With --profile DIR each replication process writes cProfile stats there.
Usage: python3 bench/bench_replication.py [--mb 30] [--runs 3] [--block-size 65536]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from aiortc import RTCPeerConnection, RTCSessionDescription

from streamer.core import crypto
from streamer.core.feed import Feed
from streamer.net.loop import run
from streamer.net.replicator import NetworkReplicator
from streamer.net.rtc import HIGH_WATER, LOW_WATER, RtcPeer

BLOCK = 64 * 1024
KEY = crypto.key_pair(b"\x09" * 32)


async def _pipe_recv(conn: Connection) -> object:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


async def _receive(conn: Connection, mode: str, blocks: int, directory: str, block: int) -> None:
    offer = await _pipe_recv(conn)
    assert isinstance(offer, str)
    if mode == "raw":
        pc = RTCPeerConnection()
        done = asyncio.get_running_loop().create_future()
        received = 0

        @pc.on("datachannel")
        def on_channel(dc) -> None:
            @dc.on("message")
            def on_message(message: bytes) -> None:
                nonlocal received
                received += len(message)
                if received >= blocks * block and not done.done():
                    done.set_result(None)

        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        conn.send(pc.localDescription.sdp)
        await done
        conn.send("done")
        await _pipe_recv(conn)
        await pc.close()
        return
    feed = Feed.open(Path(directory) / "reader", key=KEY.public_key, create=True)
    net = NetworkReplicator(feed, None, archive=True)
    await net.start()
    peer = RtcPeer("writer", initiator=False)
    conn.send(await peer.answer(offer))
    channel = await peer.channel()
    channel.is_writer = True
    changed = asyncio.Event()
    feed.add_listener(lambda _e: changed.set())
    net.add_connection(channel)
    while feed.contiguous_length < blocks:
        await changed.wait()
        changed.clear()
    conn.send("done")
    await _pipe_recv(conn)
    await net.stop()
    await channel.close()
    feed.close()


def _child(
    conn: Connection, mode: str, blocks: int, directory: str, block: int, profile: str | None
) -> None:
    if profile and mode == "replication":
        import cProfile

        prof = cProfile.Profile()
        prof.runcall(run, _receive(conn, mode, blocks, directory, block))
        prof.dump_stats(Path(profile) / "reader.prof")
    else:
        run(_receive(conn, mode, blocks, directory, block))
    conn.send(_cpu())


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


async def _send(
    conn: Connection, mode: str, blocks: int, writer: Feed | None, block: int
) -> float:
    payload = os.urandom(block)
    if mode == "raw":
        pc = RTCPeerConnection()
        dc = pc.createDataChannel("bench", ordered=True)
        opened = asyncio.Event()
        dc.on("open", opened.set)
        await pc.setLocalDescription(await pc.createOffer())
        conn.send(pc.localDescription.sdp)
        answer = await _pipe_recv(conn)
        assert isinstance(answer, str)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await opened.wait()
        start = time.perf_counter()
        low = asyncio.Event()
        dc.bufferedAmountLowThreshold = LOW_WATER
        dc.on("bufferedamountlow", low.set)
        for _ in range(blocks):
            while dc.bufferedAmount > HIGH_WATER:
                low.clear()
                await low.wait()
            dc.send(payload)
        await _pipe_recv(conn)
        elapsed = time.perf_counter() - start
        conn.send("bye")
        await pc.close()
        return elapsed
    assert writer is not None
    net = NetworkReplicator(writer, None)
    await net.start()
    peer = RtcPeer("reader", initiator=True)
    conn.send(await peer.offer())
    answer = await _pipe_recv(conn)
    assert isinstance(answer, str)
    await peer.accept(answer)
    channel = await peer.channel()
    start = time.perf_counter()
    net.add_connection(channel)
    await _pipe_recv(conn)
    elapsed = time.perf_counter() - start
    conn.send("bye")
    await net.stop()
    await channel.close()
    return elapsed


def _run_once(
    mode: str, blocks: int, writer_dir: str, block: int, profile: str | None
) -> tuple[float, float]:
    """(seconds, CPU seconds of both processes) for one transfer."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as directory:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child, mode, blocks, directory, block, profile))
        proc.start()

        async def main() -> float:
            writer = Feed.open(writer_dir) if mode == "replication" else None
            try:
                return await _send(parent, mode, blocks, writer, block)
            finally:
                if writer is not None:
                    writer.close()

        cpu0 = _cpu()
        if profile and mode == "replication":
            import cProfile

            prof = cProfile.Profile()
            elapsed = prof.runcall(run, main())
            prof.dump_stats(Path(profile) / "writer.prof")
        else:
            elapsed = run(main())
        cpu = _cpu() - cpu0
        cpu += parent.recv() if parent.poll(30) else 0.0
        proc.join(30)
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=30.0, help="stream size in MB (default 30)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each, alternating (default 3)")
    parser.add_argument(
        "--block-size", type=int, default=BLOCK, help="bytes per block and raw message (65536)"
    )
    parser.add_argument("--profile", metavar="DIR", help="write cProfile stats of replication")
    args = parser.parse_args()
    block = args.block_size
    if not 1024 <= block <= 1024 * 1024:
        parser.error("--block-size must be 1024..1048576 bytes")
    blocks = max(1, int(args.mb * 1024 * 1024 // block))
    size_mb = blocks * block / 1e6
    with tempfile.TemporaryDirectory() as directory:
        writer = Feed.create(Path(directory) / "writer", KEY)
        for _ in range(0, blocks, 64):
            writer.append([os.urandom(block) for _ in range(min(64, blocks - writer.length))])
        writer.close()
        times: dict[str, list[float]] = {"raw": [], "replication": []}
        cpus: dict[str, list[float]] = {"raw": [], "replication": []}
        for n in range(args.runs):
            for mode in ("raw", "replication"):
                elapsed, cpu = _run_once(
                    mode, blocks, str(Path(directory) / "writer"), block, args.profile
                )
                times[mode].append(elapsed)
                cpus[mode].append(cpu)
                print(
                    f"run {n + 1} {mode:>11}: {size_mb / elapsed:6.1f} MB/s ({elapsed:.2f} s, "
                    f"{cpu / size_mb:.3f} CPU s/MB)"
                )
    raw = size_mb / statistics.median(times["raw"])
    ours = size_mb / statistics.median(times["replication"])
    raw_cpu = statistics.median(cpus["raw"]) / size_mb
    our_cpu = statistics.median(cpus["replication"]) / size_mb
    print(
        f"{size_mb:.1f} MB in {blocks} blocks of {block} bytes, one aiortc data channel, "
        "two processes"
    )
    print(f"raw aiortc data channel (baseline): {raw:6.1f} MB/s, {raw_cpu:.3f} CPU s/MB")
    print(f"replication (verify + store):       {ours:6.1f} MB/s, {our_cpu:.3f} CPU s/MB")
    print(f"ratio replication / raw:            {ours / raw:6.2f}  (target >= 0.8)")
    print(f"CPU per MB replication / raw:       {our_cpu / raw_cpu:6.2f}  (target <= 1.25)")


if __name__ == "__main__":
    main()
