"""The repository stands alone: no code, test, benchmark or script names a path outside it
(the reference material a developer may have beside the checkout is never read)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".js", ".mjs", ".sh", ".toml", ".cfg", ".ini", ".json", ".html", ".md", ""}

# The reference-material folder beside a developer's checkout (named by climbing one level out
# of the repo), and Path.parents indexes deep enough to leave the repo from any file in it. The
# pattern is assembled so this file does not spell the path it forbids.
SIBLING = "sha" + "red"
OUTSIDE = [
    re.compile(r"\.\./" + SIBLING + r"\b"),
]


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        files = [ROOT / line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts]
    return [p for p in files if p.suffix in TEXT_SUFFIXES and p.is_file() and p.name != Path(__file__).name]


def _depth(path: Path) -> int:
    return len(path.relative_to(ROOT).parts) - 1


@pytest.mark.parametrize("path", _tracked_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_names_a_path_outside_the_repo(path: Path) -> None:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        return
    rel = path.relative_to(ROOT)
    for pattern in OUTSIDE:
        match = pattern.search(text)
        assert match is None, f"{rel} names a path outside the repo: {match.group(0)!r}"
    if path.suffix == ".py":
        # parents[n] climbs n+1 levels from the file; more than the file's depth leaves the repo.
        for m in re.finditer(r"\.parents\[(\d+)\]", text):
            assert int(m.group(1)) <= _depth(path), (
                f"{rel} climbs above the repo root with parents[{m.group(1)}]"
            )
    # Relative climbs in strings: more `../` than the file is deep leaves the repo.
    for m in re.finditer(r"((?:\.\./)+)", text):
        climbs = m.group(1).count("../")
        assert climbs <= _depth(path), f"{rel} climbs above the repo root: {m.group(0)!r}"


def test_reference_vectors_are_in_the_repo() -> None:
    assert (ROOT / "tests" / "data" / "hypercore-vectors.json").is_file()
