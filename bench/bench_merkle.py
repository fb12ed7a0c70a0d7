"""Throughput of the sans-IO Merkle tree (streamer.core.merkle) beside npm hypercore 11 in the same run.

Workloads mirror bench/reference_feed.js: appends of 64 KiB blocks (1 and 16 per call, signed),
proof build / verify / sparse apply in a 10,000-block feed. Ours keeps nodes in memory (no disk);
the reference writes its storage, so the append ratio is an upper bound for a full feed.
Usage: python3 bench/bench_merkle.py [--quick]
"""

from __future__ import annotations

import argparse
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
NODE_MODULES = HERE / "out" / "reference" / "node_modules"


def blocks_of(count: int, size: int) -> list[bytes]:
    # distinct blocks, like a real stream (and like reference_feed.js)
    return [struct.pack("<I", i) + bytes(size - 4) for i in range(count)]


def append_rate(kp: crypto.KeyPair, blocks: list[bytes], per_call: int) -> float:
    store = MemoryNodeStore()
    tree = MerkleTree(store, CompatVerifier(kp.public_key))
    t0 = time.perf_counter()
    for i in range(0, len(blocks), per_call):
        batch = tree.append(blocks[i : i + per_call], kp.secret_key)
        store.put(batch.nodes)
        tree.commit(batch)
    return len(blocks) / (time.perf_counter() - t0)


def proof_rates(kp: crypto.KeyPair, count: int, size: int, samples: int) -> dict[str, float]:
    blocks = blocks_of(count, size)
    store = MemoryNodeStore()
    writer = MerkleTree(store, CompatVerifier(kp.public_key))
    for i in range(0, count, 256):
        batch = writer.append(blocks[i : i + 256], kp.secret_key)
        store.put(batch.nodes)
        writer.commit(batch)
    picks = [(i * 7919) % count for i in range(samples)]

    t0 = time.perf_counter()
    proofs = []
    for index in picks:
        req = wire.Request(
            1, 0, block=wire.RequestBlock(index, 0), upgrade=wire.RequestUpgrade(0, count)
        )
        data = writer.proof(req)
        assert data.block is not None
        data.block.value = blocks[index]
        proofs.append(data)
    build = samples / (time.perf_counter() - t0)

    reader_store = MemoryNodeStore()
    reader = MerkleTree(reader_store, CompatVerifier(kp.public_key))
    t0 = time.perf_counter()
    for data in proofs:
        reader.verify(data)
    verify = samples / (time.perf_counter() - t0)

    first = writer.proof(
        wire.Request(1, 0, block=wire.RequestBlock(0, 0), upgrade=wire.RequestUpgrade(0, count))
    )
    assert first.block is not None
    first.block.value = blocks[0]
    batch = reader.verify(first)
    reader_store.put(batch.nodes)
    reader.commit(batch)
    applies = []
    for i in range(1, min(samples, count)):
        index = (i * 7919) % count
        if index == 0:
            continue
        data = writer.proof(
            wire.Request(1, 0, block=wire.RequestBlock(index, reader.missing_nodes(index)))
        )
        assert data.block is not None
        data.block.value = blocks[index]
        applies.append(data)
    t0 = time.perf_counter()
    for data in applies:
        batch = reader.verify(data)
        reader_store.put(batch.nodes)
    apply = len(applies) / (time.perf_counter() - t0)

    # build + verify of the same request, as one round (what a serving/receiving pair costs)
    t0 = time.perf_counter()
    for index in picks:
        req = wire.Request(
            1, 0, block=wire.RequestBlock(index, 0), upgrade=wire.RequestUpgrade(0, count)
        )
        data = writer.proof(req)
        assert data.block is not None
        data.block.value = blocks[index]
        MerkleTree(MemoryNodeStore(), writer.verifier).verify(data)
    round_trip = samples / (time.perf_counter() - t0)
    return {
        "proof_build": build,
        "proof_verify": verify,
        "proof_apply": apply,
        "proof_build_verify": round_trip,
    }


def crypto_floor(kp: crypto.KeyPair, blocks: list[bytes], samples: int) -> dict[str, float]:
    """The unavoidable crypto of each workload alone: leaf hashes + one signature per call,
    and one signature check per upgrade proof."""
    out = {}
    for name, per_call in (("append_1", 1), ("append_16", 16)):
        t0 = time.perf_counter()
        for i in range(0, len(blocks), per_call):
            for b in blocks[i : i + per_call]:
                crypto.leaf_hash(b)
            crypto.sign(b"x" * 80, kp.secret_key)
        out[name] = len(blocks) / (time.perf_counter() - t0)
    sig = crypto.sign(b"x" * 80, kp.secret_key)
    t0 = time.perf_counter()
    for _ in range(samples):
        crypto.verify(b"x" * 80, sig, kp.public_key)
    out["proof_verify"] = samples / (time.perf_counter() - t0)
    return out


def reference(params: dict) -> tuple[dict | None, str]:
    node = shutil.which("node")
    if node is None or not NODE_MODULES.is_dir():
        return None, "needs node and bench/out/reference/node_modules"
    with tempfile.TemporaryDirectory() as work:
        out = subprocess.run(
            [node, str(HERE / "reference_feed.js"), str(NODE_MODULES), work, json.dumps(params)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or ["no output"]
        return None, f"reference_feed.js failed: {lines[0]}"
    return json.loads(out.stdout), ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller workloads")
    args = ap.parse_args()
    params = {
        "append_blocks": 512 if args.quick else 4096,
        "block_size": 65536,
        "proof_blocks": 10_000,
        "proof_block_size": 1024,
        "proof_samples": 1000 if args.quick else 5000,
    }
    kp = crypto.key_pair(bytes([7]) * 32)
    blocks = blocks_of(params["append_blocks"], params["block_size"])
    ours = {"append_1": append_rate(kp, blocks, 1), "append_16": append_rate(kp, blocks, 16)}
    floor = crypto_floor(kp, blocks, params["proof_samples"])
    del blocks
    ours.update(
        proof_rates(kp, params["proof_blocks"], params["proof_block_size"], params["proof_samples"])
    )
    ref, why = reference(params)
    print(f"params: {json.dumps(params)}")
    print(
        f"{'figure (per second)':<20}{'ours':>10}{'npm ref':>10}{'ratio':>8}{'crypto floor':>14}{'ratio':>8}"
    )
    for name, value in ours.items():
        cells = []
        for base in ((ref or {}).get(name), floor.get(name)):
            cells.append((f"{base:,.0f}", f"{value / base:.2f}x") if base else ("-", "-"))
        (r, rr), (f, fr) = cells
        print(f"{name:<20}{value:>10,.0f}{r:>10}{rr:>8}{f:>14}{fr:>8}")
    if ref is None:
        print(f"npm reference not run: {why}")
    else:
        print(
            f"npm hypercore {ref.get('version')} (its appends include disk writes; ours are in memory)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
