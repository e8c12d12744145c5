"""The floors of docs/architecture.md: a module imports (at run time) only from floors below
its own, so there are no cycles and the pure vocabulary stays at the bottom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gradtune"

FLOORS = [
    {"errors", "outcome", "interrupt", "spool", "healthy", "rescue"},
    {"params", "credentials", "address", "runview", "seeds", "onset"},
    {"spec", "attention", "note"},
    {"signals", "search_space", "workloads", "clipping", "telemetry", "precision", "feasibility",
     "writer", "checkpoint", "failure", "table", "dataparallel"},
    {"rollback"},
    {"trial", "searcher", "scheduler", "tracking", "study"},
    {"multiseed", "seedactor", "rankactor"},
    {"trainable", "replay"},
    {"progress", "plots"},
    {"report"},
    {"drawer"},
    {"sweep"},
    {"summary"},
    {"cli"},
    {"__main__"},
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def _runtime_imports(tree: ast.Module) -> set[str]:
    """Top-level gradtune modules imported, leaving out ``if TYPE_CHECKING:`` blocks."""
    skipped = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
               and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gradtune"):
            parts = node.module.split(".")
            found |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("gradtune.")}
    return found


def test_every_module_is_on_a_floor():
    top = {p.stem if p.parent == PACKAGE else p.parent.name for p in PACKAGE.rglob("*.py")}
    assert top - {"__init__"} == set(FLOOR)


def test_imports_only_go_down():
    for path in PACKAGE.rglob("*.py"):
        module = path.stem if path.parent == PACKAGE else path.parent.name
        if module == "__init__":
            continue
        for dep in _runtime_imports(ast.parse(path.read_text())) - {module}:
            assert FLOOR[dep] < FLOOR[module], f"{path.relative_to(PACKAGE)} imports {dep} from floor {FLOOR[dep]}"


@pytest.mark.slow  # a fresh interpreter importing Ray and MLflow
def test_the_driver_does_not_import_torch():
    """torch costs seconds at every sweep's start; only the workers that train need it."""
    import subprocess
    import sys

    code = "import sys, gradtune.cli, gradtune.sweep, gradtune.summary; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
