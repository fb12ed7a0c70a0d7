"""The simulator's own speed: the same swarm (one seed) run under CPython and under PyPy
(scripts/simulate-pypy) in alternating rounds; prints each one's CPU seconds, the median ratio,
the CPU per viewer per simulated second, and what a 10,000-viewer, 60 s + 10 s run would take at
that pace beside the issue's 20 minutes. The two reports must agree to the digit (only the timing
line differs), or the run stops.

    python3 bench/bench_simspeed.py --viewers 500 --seconds 20 --rounds 3

The projection is linear in viewers x simulated seconds, which flatters big runs: per viewer, a
10,000-viewer swarm costs more than a 1,000-viewer one (a bigger event heap, colder caches;
docs/replication.md, "Simulator cost").
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 20 * 60  # the issue: 10,000 viewers for 60 s in under 20 minutes
TARGET_VIEWER_SECONDS = 10_000 * 70  # 60 s and the default 10 s drain


def run(command: list[str], png: Path) -> tuple[float, list[str]]:
    """CPU seconds of one simulator run, and its report without the timing and plot lines."""
    result = subprocess.run([*command, "--png", str(png)], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"bench_simspeed: a run failed: {result.stderr.strip().splitlines()[-1:]}")
    lines = result.stdout.splitlines()
    timing = next(line for line in lines if line.startswith("simulated "))
    cpu = re.search(r"([\d.]+) s CPU", timing)
    assert cpu is not None, timing
    report = [line for line in lines if not line.startswith(("simulated ", "delay plot"))]
    return float(cpu.group(1)), report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--drain", type=float, default=2)
    parser.add_argument("--part", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    flags = [
        "--viewers", str(args.viewers), "--seconds", f"{args.seconds:g}",
        "--drain", f"{args.drain:g}", "--part", f"{args.part:g}", "--segment", "1",
        "--bitrate", "1", "--upload", "5", "--rtt", "50", "--seed", str(args.seed),
    ]
    commands = {
        "CPython": [sys.executable, str(ROOT / "bench" / "simulate.py"), *flags],
        "PyPy": [str(ROOT / "scripts" / "simulate-pypy"), *flags],
    }
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    reports: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # A tiny first run sets up .venv-pypy (a minute or two once), outside the timed rounds.
        run(commands["PyPy"][:1] + ["--viewers", "2", "--seconds", "1"], Path(tmp) / "w.png")
        for r in range(args.rounds):
            for name, command in commands.items():
                seconds, report = run(command, Path(tmp) / f"{name}.png")
                cpu[name].append(seconds)
                if reports.setdefault(name, report) != report:
                    sys.exit(f"bench_simspeed: {name} gave two reports for one seed")
                print(f"round {r + 1}: {name} {seconds:.1f} CPU-s", flush=True)
    if reports["CPython"] != reports["PyPy"]:
        sys.exit("bench_simspeed: CPython and PyPy disagree on the swarm (reports differ)")
    viewer_seconds = args.viewers * (args.seconds + args.drain)
    print(
        f"swarm: {args.viewers} viewers, {args.seconds:g} s + {args.drain:g} s drain, "
        f"{args.part:g} s parts, 1 Mbit/s on 5 Mbit/s uplinks, seed {args.seed}; "
        "the two reports agree to the digit"
    )
    base = statistics.median(cpu["CPython"])
    for name in commands:
        median = statistics.median(cpu[name])
        per = median / viewer_seconds
        projected = per * TARGET_VIEWER_SECONDS
        print(
            f"{name:8s} median {median:7.1f} CPU-s ({', '.join(f'{c:.1f}' for c in cpu[name])}); "
            f"{base / median:4.2f}x CPython; {per * 1e3:5.2f} ms per viewer per simulated "
            f"second; 10,000 viewers x 70 s at this pace: {projected / 60:5.0f} min "
            f"(target {TARGET_S / 60:.0f} min: {projected / TARGET_S:4.1f}x over)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
