"""CPU per block of a replicating reader's sans-IO core (no network, no asyncio), beside the floor.

A server Replicator (a read-only Feed of --blocks blocks of --block-size bytes, serving as a viewer
serves history) and an archive reader Replicator exchange messages in memory, the way
NetworkReplicator drives them: per received message `receive`, read events, `datagrams_to_send`,
`get_timer`. The reader keeps its usual window of requests in flight, so its proofs are as long as
over a real channel. Only the reader's calls are timed (process CPU time). The floor, measured in
the same run, is hashing each block once (the leaf hash verification cannot skip). Prints µs per
block of each and the ratio. With --profile FILE the reader's calls are also run under cProfile
(a separate pass) and the stats written there.
Usage: python3 bench/bench_reader_cpu.py [--blocks 2000] [--block-size 16384] [--runs 5]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from streamer.core import crypto
from streamer.core.feed import Feed
from streamer.core.scheduler import Replicator, ReplicatorConfig

KEY = crypto.key_pair(b"\x0c" * 32)


def _make_source(directory: Path, blocks: int, size: int) -> None:
    feed = Feed.create(directory, KEY)
    batch = 256
    for start in range(0, blocks, batch):
        feed.append([os.urandom(size) for _ in range(min(batch, blocks - start))])
    feed.close()
    (directory / "secret_key").unlink(missing_ok=True)  # served read-only, as a viewer serves


def _run(source: Path, work: Path, blocks: int, profile: cProfile.Profile | None) -> float:
    """Reader CPU seconds to fetch every block."""
    server_feed = Feed.open(source)
    reader_feed = Feed.open(work, key=KEY.public_key, create=True)
    server = Replicator(server_feed)
    reader = Replicator(reader_feed, ReplicatorConfig(archive=True))
    s_side = server.add_session(name="reader")
    r_side = reader.add_session(name="server", remote_is_writer=False)
    spent = 0.0
    now = 0.0
    clock = time.process_time

    def timed(
        fn: Callable[[float, bytes | None], list[bytes]], now: float, data: bytes | None = None
    ) -> list[bytes]:
        nonlocal spent
        if profile is not None:
            profile.enable()
        t0 = clock()
        result = fn(now, data)
        spent += clock() - t0
        if profile is not None:
            profile.disable()
        return result

    def reader_step(now: float, data: bytes | None) -> list[bytes]:
        # What NetworkReplicator does per received message (or timer): feed it, read the events,
        # send what the session queued, re-arm the timer.
        if data is None:
            reader.handle_timer(now)
        else:
            reader.receive(r_side, data, now)
        while reader.next_event() is not None:
            pass
        out = r_side.datagrams_to_send(now)
        reader.get_timer()
        return out

    to_server = r_side.datagrams_to_send(now)
    while server.next_event() is not None:
        pass
    to_reader: list[bytes] = s_side.datagrams_to_send(now)
    while reader_feed.contiguous_length < blocks or reader_feed.length < blocks:
        if not to_server and not to_reader:
            raise RuntimeError("replication stalled")
        now += 0.0005
        # The server answers what arrived; the reader then handles what reached it one message
        # at a time, as its receive loop does, queuing new requests as answers come in.
        # (sending after each one, as its receive loop lets its sender run).
        for data in to_server:
            server.receive(s_side, data, now)
            while server.next_event() is not None:
                pass
            to_reader += s_side.datagrams_to_send(now)
        to_server = []
        batch, to_reader = to_reader, []
        due = reader.get_timer()
        if due is not None and due <= now:
            to_server += timed(reader_step, now)
        for data in batch:
            to_server += timed(reader_step, now, data)
        if reader_feed.flush_due and reader_feed.blocks_present % 256 == 0:
            reader_feed.flush()  # off the timed path, as the adapter's worker thread does
    server_feed.close()
    reader_feed.close()
    return spent


def _floor(source: Path, blocks: int) -> float:
    feed = Feed.open(source)
    values = [feed.get(i) for i in range(blocks)]
    feed.close()
    t0 = time.process_time()
    for v in values:
        crypto.leaf_hash(v)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=2000)
    ap.add_argument("--block-size", type=int, default=16384)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", help="write the reader's cProfile stats to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        _make_source(source, args.blocks, args.block_size)
        core, floor = [], []
        for n in range(args.runs):
            core.append(_run(source, Path(tmp) / f"r{n}", args.blocks, None) / args.blocks)
            floor.append(_floor(source, args.blocks) / args.blocks)
        if args.profile:
            prof = cProfile.Profile()
            _run(source, Path(tmp) / "prof", args.blocks, prof)
            prof.dump_stats(args.profile)
    c, f = statistics.median(core) * 1e6, statistics.median(floor) * 1e6
    print(
        f"{args.block_size} B blocks, {args.blocks} blocks, median of {args.runs}: reader core "
        f"{c:.0f} us/block, floor (leaf hash) {f:.0f} us/block, ratio {c / f:.1f}; "
        f"min (least disturbed by other load) {min(core) * 1e6:.0f} us/block"
    )


if __name__ == "__main__":
    main()
