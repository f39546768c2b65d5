"""The package layout: imports flow one way, and no module imports itself through a cycle.

io -> correlative -> mechanics -> inverse -> dislocations -> analysis -> (xrd, phasefield)
-> the top-level modules (config, pipeline, synth, demo, cli).  `chemomech.exceptions` is a
leaf that every module may use.  Imports under ``if TYPE_CHECKING:`` are not run and do not
count; lazy imports inside functions do.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "chemomech"

#: rank of each sub-package; a module may import only from ranks <= its own
RANKS = {"exceptions": 0, "io": 1, "correlative": 2, "mechanics": 3, "inverse": 4,
         "dislocations": 5, "analysis": 6, "xrd": 7, "phasefield": 7}
TOP_LEVEL_RANK = 8


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package itself holds only __version__
        return 0
    return RANKS.get(parts[1], TOP_LEVEL_RANK)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported chemomech module, line, at module level) of the run-time imports in `path`."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.split(".")[0] == "chemomech" and _is_module(name):
                found.append((name, node.lineno, id(node) in top))
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_lies_in_a_known_place():
    unknown = [m for m in MODULES if len(m.split(".")) > 2 and m.split(".")[1] not in RANKS]
    assert not unknown, f"modules outside the layout's sub-packages: {unknown}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_flow_one_way(module):
    upward = [f"line {line}: {name}" for name, line, _ in imports_of(MODULES[module])
              if rank(name) > rank(module)]
    assert not upward, f"{module} imports upward: {upward}"


def test_no_import_cycle_at_module_level():
    graph = {m: {n for n, _, top in imports_of(p) if top and n in MODULES and n != m}
             for m, p in MODULES.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)


def test_the_checker_sees_upward_and_lazy_imports_but_not_type_checking_ones(tmp_path):
    """The check itself can fail: lazy upward imports are caught, TYPE_CHECKING ones are not."""
    bad = tmp_path / "bad.py"
    bad.write_text("from typing import TYPE_CHECKING\n"
                   "if TYPE_CHECKING:\n    from chemomech.config import RunConfig\n"
                   "def f():\n    from chemomech.pipeline import run\n")
    (name, line, top), = imports_of(bad)
    assert (name, line, top) == ("chemomech.pipeline", 5, False)
    assert rank(name) > rank("chemomech.io.stack")
