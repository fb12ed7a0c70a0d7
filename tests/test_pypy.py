"""The sans-IO core also runs on PyPy 3.9 (streamer/core/compat.py), where the simulator runs
about twice as fast: the core's own unit tests must pass there too, under Debian's pypy3 in
.venv-pypy (scripts/pypy-venv)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The unit tests of streamer/core: they import nothing but the core and the test helpers.
CORE_TESTS = [
    "test_admission.py", "test_backfill.py", "test_bitfield.py", "test_credit.py",
    "test_crypto.py", "test_feed.py", "test_flat_tree.py", "test_handshake.py",
    "test_membership.py", "test_merkle.py", "test_relay.py", "test_replication.py",
    "test_signal.py", "test_storage.py", "test_waiting.py", "test_wire.py",
]


def test_the_core_s_unit_tests_pass_under_pypy() -> None:
    setup = subprocess.run(
        [str(ROOT / "scripts" / "pypy-venv"), "--test"], capture_output=True, text=True, timeout=900
    )
    assert setup.returncode == 0, setup.stderr
    python = ROOT / ".venv-pypy" / "bin" / "python"
    version = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_implementation())"],
        capture_output=True, text=True, timeout=60,
    )
    assert version.stdout.strip() == "PyPy", version
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         *(f"tests/{name}" for name in CORE_TESTS)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
