"""The package's import graph follows the layer table in spoolkit/layers.py."""

from __future__ import annotations

import ast
from pathlib import Path

from spoolkit.layers import LAYERS, UWSGI_LAYER

PACKAGE = Path(__file__).resolve().parent.parent / "spoolkit"
LAYER_OF = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}
NAMES = [name for name, _ in LAYERS]


def imports_of(path: Path) -> list[tuple[str, int]]:
    """``(imported name, line)`` for every import in the file, nested ones included.

    Package-internal imports come back as the module's short name
    (``from .store import X`` -> ``store``; ``from . import api`` -> ``api``);
    others as their top-level name (``uwsgi``, ``flask``).
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                name = parts[1] if parts[0] == "spoolkit" and len(parts) > 1 else parts[0]
                found.append((name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            internal = node.level > 0 or (node.module or "").split(".")[0] == "spoolkit"
            module = node.module or ""
            if node.level == 0 and internal:
                module = module.removeprefix("spoolkit").lstrip(".")
            if internal and not module:
                found += [(alias.name, node.lineno) for alias in node.names]
            elif internal:
                found.append((module.split(".")[0], node.lineno))
            else:
                found.append((module.split(".")[0], node.lineno))
    return found


def internal_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        graph[path.stem] = {
            name for name, _ in imports_of(path) if (PACKAGE / f"{name}.py").exists()
        }
    return graph


def test_every_module_has_a_layer() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules - LAYER_OF.keys() == set(), "add these modules to spoolkit/layers.py"
    assert LAYER_OF.keys() - modules == set(), "the layer table names modules that do not exist"


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = []
    for path in sorted(PACKAGE.glob("*.py")):
        for name, line in imports_of(path):
            if name in LAYER_OF and LAYER_OF[name] > LAYER_OF[path.stem]:
                upward.append(
                    f"spoolkit/{path.name}:{line} ({NAMES[LAYER_OF[path.stem]]}) imports "
                    f"{name} ({NAMES[LAYER_OF[name]]})"
                )
    assert upward == []


def test_the_import_graph_has_no_cycle() -> None:
    graph = internal_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_only_the_runners_import_uwsgi() -> None:
    allowed = dict(LAYERS)[UWSGI_LAYER]
    importers = {
        path.stem
        for path in PACKAGE.glob("*.py")
        for name, _ in imports_of(path)
        if name in {"uwsgi", "uwsgidecorators"}
    }
    assert importers, "the runners import uwsgi somewhere: the scan must see it"
    assert importers <= allowed


def test_the_checker_sees_upward_and_nested_imports(tmp_path: Path) -> None:
    """The scan itself: an import inside a function or a TYPE_CHECKING block counts."""
    source = tmp_path / "sample.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .service import JobService\n"
        "def f():\n    from . import api\n    import spoolkit.extension\n"
    )
    assert {name for name, _ in imports_of(source)} >= {"service", "api", "extension", "typing"}
