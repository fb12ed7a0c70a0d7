"""Proof verification in the tab's JavaScript (streamer/web, run in node) beside Python's, same run.

The workload mirrors bench_merkle.py: a 10,000-block feed; proofs of one block plus an upgrade from
an empty reader (a leaf hash, the climb and one Ed25519 check each), and block-only proofs applied
to a sparse reader (hashes only: how a tab takes most blocks). Python (hashlib + libsodium) builds
every proof once; both sides verify the same bytes. Target for the tab: >= 2,000 proofs/s.
Usage: python3 bench/bench_js_verify.py [--quick] [--block-size BYTES]
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    ap.add_argument("--block-size", type=int, default=1024, help="bytes per block (default 1024)")
    args = ap.parse_args()
    count, size = 10_000, args.block_size
    samples = 1000 if args.quick else 5000
    if size * samples > 2 << 30:
        samples = max(100, (2 << 30) // size)
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
    ours: dict[str, float] = {}
    t0 = time.perf_counter()
    for data in verify:
        MerkleTree(MemoryNodeStore(), writer.verifier).verify(data)
    ours["proof_verify"] = samples / (time.perf_counter() - t0)

    reader_store = MemoryNodeStore()
    reader = MerkleTree(reader_store, writer.verifier)
    first = proof(0, 0, True)
    batch = reader.verify(first)
    reader_store.put(batch.nodes)
    reader.commit(batch)
    applies = [proof(i, reader.missing_nodes(i), False) for i in picks if i != 0]
    t0 = time.perf_counter()
    for data in applies:
        reader_store.put(reader.verify(data).nodes)
    ours["proof_apply"] = len(applies) / (time.perf_counter() - t0)

    msg = b"x" * 80
    sig = crypto.sign(msg, kp.secret_key)
    t0 = time.perf_counter()
    for _ in range(2000):
        crypto.verify(msg, sig, kp.public_key)
    ours["ed25519_verify"] = 2000 / (time.perf_counter() - t0)
    block = bytes(range(256)) * 256
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 1.0:
        hashlib.blake2b(block, digest_size=32).digest()
        n += 1
    ours["blake2b_mb_s"] = n * len(block) / 1e6 / (time.perf_counter() - t0)

    node = shutil.which("node")
    if node is None:
        print("node is missing: install nodejs")
        return 1
    with tempfile.TemporaryDirectory() as work:
        write(Path(work) / "verify.bin", [wire.encode_message(d) for d in verify])
        write(Path(work) / "first.bin", [wire.encode_message(first)])
        write(Path(work) / "apply.bin", [wire.encode_message(d) for d in applies])
        del verify, applies
        run = subprocess.run(
            [
                node,
                str(HERE / "bench_js_verify.mjs"),
                work,
                kp.public_key.hex(),
                msg.hex(),
                sig.hex(),
            ],
            capture_output=True,
            text=True,
            timeout=1200,
        )
    if run.returncode != 0:
        print(f"bench_js_verify.mjs failed: {run.stderr.strip()[-2000:]}")
        return 1
    tab = json.loads(run.stdout)
    print(f"params: {json.dumps({'blocks': count, 'block_size': size, 'samples': samples})}")
    print(f"{'figure (per second)':<26}{'tab (JS)':>12}{'Python':>12}{'JS/Py':>8}")
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
        print(f"{name:<26}{js_rate or 0:>12,.0f}{py or 0:>12,.0f}{ratio:>8}")
    print(
        f"node {subprocess.run([node, '--version'], capture_output=True, text=True).stdout.strip()}; "
        "target for the tab: proof_verify >= 2,000/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
