"""Runs the JS unit tests of the tab's protocol core (tests/js/*.test.mjs) with node's built-in
test runner, so ./scripts/test covers them; a failing JS test fails here with node's report."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.fixtures_node import node_command

ROOT = Path(__file__).resolve().parent.parent


def test_node_unit_tests_pass() -> None:
    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "js").glob("*.test.mjs"))
    assert len(tests) >= 5
    result = subprocess.run(
        [*node_command(), "--test", *tests], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
