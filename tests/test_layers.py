"""The import rules of DESIGN.md: core imports nothing else of the project and no I/O libraries;
media and net import only core; viewer may import streamer.core/net/media; only the CLI modules
read argv or configure logging."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package prefix -> project packages it may import
ALLOWED = {
    "streamer.core": {"streamer.core"},
    "streamer.media": {"streamer.core", "streamer.media"},
    "streamer.net": {"streamer.core", "streamer.net"},
    "viewer": {"streamer", "viewer"},
}
CORE_FORBIDDEN_THIRD_PARTY = {"asyncio", "aiohttp", "aiortc", "av", "socket", "uvloop", "redis"}
CLI_MODULES = {"streamer/cli.py", "viewer/cli.py"}


def _modules() -> list[Path]:
    return sorted(p for pkg in ("streamer", "viewer") for p in (ROOT / pkg).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _package(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    module = _package(path)
    rule = next((allowed for prefix, allowed in ALLOWED.items() if module.startswith(prefix)), None)
    if rule is None:
        return
    for name in _imports(path):
        if name.split(".")[0] not in ("streamer", "viewer"):
            if module.startswith("streamer.core"):
                assert name.split(".")[0] not in CORE_FORBIDDEN_THIRD_PARTY, (
                    f"{module} (sans-IO core) imports {name}"
                )
            continue
        assert any(name == a or name.startswith(a + ".") for a in rule), (
            f"{module} imports {name}; allowed: {sorted(rule)}"
        )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_cli_reads_argv_or_configures_logging(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    if rel in CLI_MODULES:
        return
    text = path.read_text()
    assert "sys.argv" not in text, f"{rel} reads sys.argv"
    assert "logging.basicConfig" not in text, f"{rel} configures logging"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_says_its_job(path: Path) -> None:
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(ROOT)} has no docstring"
