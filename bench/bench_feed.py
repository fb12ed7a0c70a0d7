"""Feed benchmark: append, full verify and proofs, each beside npm hypercore 11 measured in this run.

Usage: python3 bench/bench_feed.py [--blocks 10000] [--append-blocks 2000] [--samples 2000] [--rounds 3]
The reference is `npm install hypercore@11` (cached in bench/out/reference) driven by
bench/reference_feed.js on the same workload. It only measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from streamer.core import crypto  # noqa: E402
from streamer.core.feed import Feed  # noqa: E402
from streamer.core.wire import Request, RequestBlock, RequestUpgrade  # noqa: E402

REFERENCE_DIR = HERE / "out" / "reference"
BLOCK_SIZE = 64 * 1024


def install_reference() -> Path:
    """node_modules holding hypercore 11, installed once into bench/out/reference."""
    modules = REFERENCE_DIR / "node_modules"
    if not (modules / "hypercore" / "package.json").exists():
        if shutil.which("npm") is None:
            sys.exit("bench_feed: npm is not installed; the reference needs Node.js 20 and npm")
        REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
        (REFERENCE_DIR / "package.json").write_text('{"private": true}\n')
        print("installing the reference (npm install hypercore@11) ...", flush=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", "hypercore@11"],
            cwd=REFERENCE_DIR,
            check=True,
        )
    return modules


def settle_disk() -> None:
    """Write back everything dirty before a timed phase: the previous phase's unflushed
    writes (the reference never fsyncs) would otherwise slow the next phase's fsyncs."""
    os.sync()


def fsync_latency_ms(work: Path, samples: int = 100) -> float:
    """Median fdatasync time after a 64 KiB write on this disk now: what a durable append pays
    (the reference does not flush, so it does not pay it). Under CPU saturation it jumps from
    ~0.15 ms to ~4 ms here."""
    work.mkdir(parents=True, exist_ok=True)
    fd = os.open(work / "probe", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        block, times = os.urandom(BLOCK_SIZE), []
        for i in range(samples):
            os.pwrite(fd, block, i * BLOCK_SIZE)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return 1000 * statistics.median(times)


def run_reference(params: dict[str, int], work: Path) -> dict[str, float]:
    modules = install_reference()
    settle_disk()
    out = subprocess.run(
        [
            "node",
            str(HERE / "reference_feed.js"),
            str(modules),
            str(work / "ref"),
            json.dumps(params),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def make_blocks(count: int, size: int) -> list[bytes]:
    # Distinct blocks like a real stream (the first four bytes carry the index).
    filler = bytes(size - 4)
    return [i.to_bytes(4, "little") + filler for i in range(count)]


def rate(count: int, started: float) -> float:
    return count / (time.perf_counter() - started)


def run_ours(params: dict[str, int], work: Path) -> dict[str, float]:
    pair = crypto.key_pair(bytes([7]) * 32)
    out: dict[str, float] = {}
    blocks = make_blocks(params["append_1_blocks"], params["block_size"])
    with Feed.create(work / "append-1", pair) as feed:
        settle_disk()
        t0 = time.perf_counter()
        for block in blocks:
            feed.append([block])
        out["append_1"] = rate(len(blocks), t0)

    blocks = make_blocks(params["feed_blocks"], params["block_size"])
    writer = Feed.create(work / "append-16", pair)
    settle_disk()
    t0 = time.perf_counter()
    for i in range(0, len(blocks), 16):
        writer.append(blocks[i : i + 16])
    out["append_16"] = rate(len(blocks), t0)
    del blocks

    t0 = time.perf_counter()
    writer.verify_all()
    out["verify_all"] = rate(writer.length, t0)

    count, samples = writer.length, params["proof_samples"]
    picks = [(i * 7919) % count for i in range(samples)]
    t0 = time.perf_counter()
    proofs = [
        writer.proof(Request(1, 0, block=RequestBlock(i, 0), upgrade=RequestUpgrade(0, count)))
        for i in picks
    ]
    out["proof_build"] = rate(samples, t0)

    reader = Feed.open(work / "reader", key=writer.key, create=True)
    t0 = time.perf_counter()
    for data in proofs:
        reader.verify(data)
    out["proof_verify"] = rate(samples, t0)

    # Sparse download: the first proof upgrades the reader, the rest carry their missing nodes.
    reader.verify_and_apply(
        writer.proof(Request(1, 0, block=RequestBlock(0, 0), upgrade=RequestUpgrade(0, count)))
    )
    wanted = [i for i in dict.fromkeys(picks) if i != 0]
    applies = [
        writer.proof(Request(1, 0, block=RequestBlock(i, reader.missing_nodes(i)))) for i in wanted
    ]
    t0 = time.perf_counter()
    for data in applies:
        reader.verify_and_apply(data)
    out["proof_apply"] = rate(len(applies), t0)
    reader.close()
    writer.close()
    return out


ROWS = [
    ("append_1", "append, 64 KiB blocks, 1 per call (blocks/s)", "ours >= reference"),
    ("append_16", "append, 64 KiB blocks, 16 per call (blocks/s)", "ours >= reference"),
    ("verify_all", "full verify (blocks/s)", ""),
    ("proof_build", "proof build: block + upgrade (proofs/s)", ""),
    ("proof_verify", "proof verify, fresh reader (proofs/s)", ">= 5,000/s"),
    ("proof_apply", "proof verify + store, sparse reader (proofs/s)", ""),
]


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--blocks", type=int, default=10_000, help="blocks in the proof/verify feed"
    )
    parser.add_argument(
        "--append-blocks", type=int, default=2_000, help="blocks for the 1-per-call run"
    )
    parser.add_argument("--samples", type=int, default=2_000, help="proofs built and verified")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternate ours/reference this often; medians shown"
    )
    args = parser.parse_args()
    params = {
        "append_1_blocks": args.append_blocks,
        "feed_blocks": args.blocks,
        "block_size": BLOCK_SIZE,
        "proof_samples": args.samples,
    }
    ours: dict[str, list[float]] = {key: [] for key, _, _ in ROWS}
    reference: dict[str, list[float]] = {key: [] for key, _, _ in ROWS}
    version = "?"
    latencies: list[float] = []
    install_reference()
    for n in range(args.rounds):
        print(f"round {n + 1}/{args.rounds} ...", flush=True)
        # Alternating keeps both sides exposed to the same background load on a shared machine.
        with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
            latencies.append(fsync_latency_ms(Path(tmp) / "probe"))
            for key, value in run_ours(params, Path(tmp) / "ours").items():
                ours[key].append(value)
        with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
            result = run_reference(params, Path(tmp))
            version = str(result.pop("version", version))
            for key, value in result.items():
                reference[key].append(value)
    print(
        f"\nfeed benchmark: {args.blocks} blocks of 64 KiB, {args.samples} proofs, "
        f"reference = npm hypercore {version} (compat) measured in the same run, "
        f"median of {args.rounds} alternating rounds, {os.cpu_count()} CPUs"
    )
    print(f"{'metric':<50} {'ours':>10} {'reference':>10} {'ratio':>7}  target")
    for key, label, target in ROWS:
        mine, theirs = median(ours[key]), median(reference[key])
        met = ""
        if target.startswith("ours"):
            met = " (met)" if mine >= theirs else " (NOT met)"
        elif target.startswith(">="):
            met = " (met)" if mine >= 5000 else " (NOT met)"
        print(f"{label:<50} {mine:>10,.0f} {theirs:>10,.0f} {mine / theirs:>6.2f}x  {target}{met}")
    print(
        f"disk: fdatasync of a 64 KiB write took {median(latencies):.2f} ms (median; per round: "
        + ", ".join(f"{v:.2f}" for v in latencies)
        + "). Ours fsyncs once per append call; the reference (RocksDB, default write options) does not fsync."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
