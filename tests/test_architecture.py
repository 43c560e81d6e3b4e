"""The package's layering: imports point down (no cycles at module level) and no module imports
another module's private names."""

from __future__ import annotations

import ast
import functools
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "unnorm"


@functools.cache
def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


@functools.cache
def _imports() -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(module, imported module, imported names) for every module-level relative import;
    parsed once, since each module's test below reads them all."""
    found = []
    for module, path in _modules().items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.parse(path.read_text()).body:
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found.append((module, target, tuple(alias.name for alias in node.names)))
    return tuple(found)


def test_module_level_imports_have_no_cycle():
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, target, names in _imports():
        submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in modules]
        # `from . import x` imports the submodule x; `from .x import y` imports module x
        edges = submodules if len(submodules) == len(names) else [target, *submodules]
        graph[module].update(edge for edge in edges if edge in modules and edge != module)
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_private_name_is_imported_from_another_module(module):
    modules = _modules()
    private = [f"{target}.{name}" for source, target, names in _imports()
               if source == module for name in names
               # private modules (_checks, _compat, _xla) are imported whole; their functions
               # are public within the package
               if name.startswith("_") and f"{target}.{name}" not in modules]
    assert private == []
