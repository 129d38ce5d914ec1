"""The import graph of genattr's modules has no cycle, deferred imports (inside functions, and
``importlib.import_module`` of a literal name) included; imports made for type hints only
(``if TYPE_CHECKING:``) are left out, as they never run."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import genattr

ROOT = Path(genattr.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def _run_time_nodes(tree: ast.AST):
    hidden = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(child) for child in ast.walk(node))
    return (node for node in ast.walk(tree) if id(node) not in hidden)


def import_graph() -> dict[str, set[str]]:
    """module -> the genattr modules it imports when it runs."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _run_time_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (
                    _absolute(module, is_package, node.level, node.module)
                    if node.level
                    else node.module or ""
                )
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif (
                isinstance(node, ast.Call)
                and ast.unparse(node.func).endswith("import_module")
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                name = node.args[0].value
                level = len(name) - len(name.lstrip("."))
                targets = [_absolute(module, is_package, level, name.lstrip(".")) if level else name]
            else:
                continue
            graph[module].update(t for t in targets if t in modules and t != module)
    return graph


def test_the_import_graph_is_complete_and_has_no_cycle():
    graph = import_graph()
    assert {"genattr.model.loading", "genattr.catalog", "genattr.io"} <= set(graph)
    assert "genattr.catalog" in graph["genattr.model.loading"]  # a deferred import is seen
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_the_check_finds_a_cycle_through_a_deferred_import():
    graph = import_graph()
    graph["genattr.catalog"].add("genattr.model.loading")
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()
