"""Shared test settings. Area-specific fixtures live in tests/fixtures_*.py and are imported by
the tests that need them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
VECTORS_PATH = DATA / "hypercore-vectors.json"


@pytest.fixture(scope="session")
def vectors() -> dict:
    """Reference values from npm hypercore 11 (tests/data/hypercore-vectors.json; see
    tests/data/README.md for where they come from and how to regenerate them)."""
    return json.loads(VECTORS_PATH.read_text())
