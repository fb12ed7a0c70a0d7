"""Small helpers the process-level benchmarks share: a free loopback port, a percentile by rank,
and a JSON stats file read while its writer may be replacing it."""

from __future__ import annotations

import json
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """The value at rank q (0..1) of `values`, nearest rank, no interpolation."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def read_stats(path: Path) -> dict:
    """A `--stats` JSON file, or {} while it does not exist yet or is being replaced."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
