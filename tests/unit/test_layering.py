"""The architecture, checked from the source: node/ names no plugin, plugins and the
dashboard do not reach into the HTTP adapter, a worker does not load the dashboard, and
no two modules import each other (directly or round a longer loop)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from node.catalogue import catalogue

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("node", "plugins", "dashboard")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")
    }


def imports_at_load(path: Path) -> set[str]:
    """Modules `path` imports when it is loaded: module level, outside TYPE_CHECKING."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue  # runs later, not on load
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(node, field, []))

    visit(ast.parse(path.read_text()).body)
    return found


def every_import(path: Path) -> set[str]:
    """Every module `path` names in an import statement, wherever it stands."""
    found: set[str] = set()
    for inner in ast.walk(ast.parse(path.read_text())):
        if isinstance(inner, ast.Import):
            found.update(alias.name for alias in inner.names)
        elif isinstance(inner, ast.ImportFrom) and inner.module:
            found.add(inner.module)
    return found


def test_node_imports_no_plugin_and_names_none() -> None:
    """The core knows plugins only through the catalogue: no import of plugins/, and no
    string that is a plugin's name or a module path into plugins/."""
    names = set(catalogue().names)
    assert names >= {"ratelimit", "cache", "shard", "breaker"}
    for module, path in modules().items():
        if not module.startswith("node"):
            continue
        imported = every_import(path)
        assert not [m for m in imported if m == "plugins" or m.startswith("plugins.")], module
        tree = ast.parse(path.read_text())
        slots = {  # the call model's own fields (Call.shard) are not plugin names
            id(constant)
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and "__slots__" in ast.unparse(node.targets[0])
            for constant in ast.walk(node.value)
        }
        strings = [
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in slots
        ]
        named = [s for s in strings if s in names or s.startswith("plugins.")]
        assert not named, f"{module} names {named}"


def test_plugins_and_dashboard_do_not_import_the_http_adapter() -> None:
    """node/http.py is the hot path's adapter; admin handlers and the dashboard answer
    with node.wire's json_response instead."""
    for module, path in modules().items():
        if module.startswith(("plugins", "dashboard")):
            assert "node.http" not in every_import(path), module
            assert "node.app" not in every_import(path), module


def test_no_import_cycles() -> None:
    known = modules()
    graph = {
        module: {
            target
            for name in imports_at_load(path)
            for target in (name, name.rpartition(".")[0])
            if target in known and target != module
        }
        for module, path in known.items()
    }
    # A package imports its own submodules on load; that is not a cycle of the design.
    for module in graph:
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_a_worker_node_does_not_load_the_dashboard() -> None:
    """Building a worker's app imports nothing of dashboard/ (its templates, its hub)."""
    probe = (
        "import sys\n"
        "from node.app import build_app\n"
        "from node.config import Settings\n"
        "build_app(Settings(), 'worker')\n"
        "print(sorted(m for m in sys.modules if m == 'dashboard' or m.startswith('dashboard.')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
