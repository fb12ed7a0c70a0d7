"""How tests run node: the binary, checked for a version that has WebCrypto's Ed25519 and the
built-in test runner (node 18 needs a flag for the global `crypto`; 20+ has it by default)."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache


@cache
def node_command() -> list[str]:
    """`node` plus the flags our ES modules need; AssertionError saying what to install."""
    node = shutil.which("node")
    assert node, "node is missing: install nodejs (sudo apt-get install nodejs; .ci/run does)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    assert major >= 18, f"node {version.stdout.strip()} is too old: the tests need node 18+"
    return [node] if major >= 20 else [node, "--experimental-global-webcrypto"]
