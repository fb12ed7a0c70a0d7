"""bench/simulate.py runs the real sessions and replicators over its in-memory network: a small
swarm of it, run here, must deliver every block with no peer dropped as misbehaving (its feed
model, bench/simnet.MemoryFeed, must keep up with how the core verifies and stores)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("push", [True, False])
def test_a_small_simulated_swarm_gets_every_block_and_drops_no_one(
    tmp_path: Path, push: bool
) -> None:
    args = [
        sys.executable, str(ROOT / "bench" / "simulate.py"), "--viewers", "25", "--seconds", "6",
        "--part", "0.2", "--segment", "1", "--churn", "0", "--seed", "4",
        "--png", str(tmp_path / "sim.png"),
    ]
    if push:
        args.append("--push")
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    misbehaved = re.search(r"peers dropped as misbehaving: (\d+)", out)
    missing = re.search(r"blocks never received: (\d+)", out)
    starved = re.search(r"starved viewers: (\d+)", out)
    assert misbehaved and missing and starved, out
    assert int(misbehaved.group(1)) == 0, out
    assert int(missing.group(1)) == 0, out
    assert int(starved.group(1)) == 0, out
