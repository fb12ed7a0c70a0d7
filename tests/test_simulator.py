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


def _report(command: list[str], png: Path) -> tuple[list[str], str]:
    """The simulator's report lines but its timing and plot lines, and the timing line."""
    result = subprocess.run(
        [*command, "--png", str(png)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    timing = next(line for line in lines if line.startswith("simulated "))
    assert f"delay plot: {png}" in result.stdout, result.stdout
    return [line for line in lines if not line.startswith(("simulated ", "delay plot"))], timing


def test_the_simulator_reports_the_same_swarm_under_pypy(tmp_path: Path) -> None:
    """scripts/simulate-pypy runs the same core on PyPy 3.9 (streamer/core/compat.py): the same
    seed must give the same report, every figure to the digit, with every real-world flag on."""
    flags = [
        "--viewers", "30", "--seconds", "6", "--drain", "2", "--churn", "0.2",
        "--symmetric", "0.2", "--flash", "3", "--upload-mix", "0.3:0.5,0.5:2,0.2:5",
        "--upload-budget", "2", "--push", "--verbose", "--seed", "3",
    ]
    pypy, pypy_timing = _report([str(ROOT / "scripts" / "simulate-pypy"), *flags], tmp_path / "a.png")
    cpython, cpython_timing = _report(
        [sys.executable, str(ROOT / "bench" / "simulate.py"), *flags], tmp_path / "b.png"
    )
    assert "(PyPy 3." in pypy_timing, pypy_timing
    # PyPy has no matplotlib: the project's CPython draws its plot from the series it hands on.
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "a.json").exists()  # the series went through a temporary file
    assert "(CPython 3." in cpython_timing, cpython_timing
    assert any(line.startswith("delay behind live: p50") for line in pypy), pypy
    assert pypy == cpython
