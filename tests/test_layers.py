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


# ---------------------------------------------------------------- no import cycles


def _module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Module name -> file, for every module of the given top-level packages under root."""
    files: dict[str, Path] = {}
    for pkg in packages:
        for path in (root / pkg).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def _import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Which project modules each module imports: absolute and relative imports, at any depth
    (inside functions and `if TYPE_CHECKING:` too); `from pkg import mod` names the module."""
    files = _module_files(root, packages)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            targets.add(name)
            targets.update(f"{name}.{alias.name}" for alias in node.names)
        graph[module] = {t for t in targets if t in files and t != module}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_no_import_cycles_among_project_modules() -> None:
    graph = _import_graph(ROOT, ("streamer", "viewer"))
    assert "streamer.core.replication" in graph["streamer.core.scheduler"]  # the graph is real
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_sees_relative_and_function_level_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")
    graph = _import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert _find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("import typing\n")
    assert _find_cycle(_import_graph(tmp_path, ("pkg",))) is None


def _is_exception_class(node: ast.ClassDef) -> bool:
    bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
    return any(b.endswith(("Error", "Exception", "Warning")) for b in bases) or bool(
        bases & {"SwarmcastError", "NetworkError", "ProofError", "ValueError", "Exception"}
    )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_exception_class_lives_in_the_error_tree(path: Path) -> None:
    if path == ROOT / "streamer" / "core" / "errors.py":
        return
    tree = ast.parse(path.read_text())
    found = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and _is_exception_class(n)]
    assert not found, f"{path.relative_to(ROOT)} defines {found}; put them in streamer/core/errors.py"
