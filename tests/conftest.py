"""Shared test settings. Area-specific fixtures live in tests/fixtures_*.py and are imported by
the tests that need them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
VECTORS_PATH = SHARED / "hypercore" / "vectors.json"


@pytest.fixture(scope="session")
def vectors() -> dict:
    """Reference values from npm hypercore 11 (../shared/hypercore/vectors.json)."""
    return json.loads(VECTORS_PATH.read_text())
