"""The package layout stays readable: no import circles between modules, no module over ~400 lines.

Both were broken once (issue 11: ``mesh.py -> backends.py -> fast_inference.py -> mesh.py`` and
``cli.py -> serve_cli.py -> cli.py``; files of 600-1,100 lines), so they are checked, not just promised.
Imports inside functions count too: a lazy import back into a module that imported you is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("att3d", "server")
MAX_LINES = 400
LONG_MODULES = {
    # One dataclass per config section, each field with its docstring (the CLI and the job API's schema
    # read them): splitting would scatter one concept over several files.
    "att3d/config.py": 460,
}


def _modules(root: Path) -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports anywhere (functions included), except under ``TYPE_CHECKING``."""

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(filter(None, (owner(alias.name) for alias in node.names)))

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 0 and node.module:
                found.update(filter(None, (owner(f"{node.module}.{alias.name}") for alias in node.names)))

    Visitor().visit(ast.parse(path.read_text()))
    return found


def import_cycles(root: Path) -> list[list[str]]:
    """Groups of project modules that import each other, directly or round a longer loop (Tarjan)."""
    modules = _modules(root)
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles():
    assert import_cycles(ROOT) == []


def test_cycle_finder_sees_a_lazy_circle(tmp_path):
    package = tmp_path / "att3d"
    package.mkdir()
    (tmp_path / "server").mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from att3d.b import thing\nimport att3d.c\n")
    (package / "b.py").write_text("def thing():\n    from att3d import a\n")  # lazy, still a circle
    type_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from att3d import a\n"
    (package / "c.py").write_text(type_only)  # only for type checkers: not a circle
    assert import_cycles(tmp_path) == [["att3d.a", "att3d.b"]]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in _modules(ROOT).values()))
def test_module_size(path):
    lines = len((ROOT / path).read_text().splitlines())
    assert lines <= LONG_MODULES.get(path, MAX_LINES), f"{path} has {lines} lines; split it by job"
