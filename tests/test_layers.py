"""The layers of lesson5, read from its source: core < services < apps, and nothing imports upward.

core      config, data/, models/, optim/, learner and its callbacks, losses, metrics: torch, numpy, pandas, Hydra
services  lifecycle (one tracked run), tracking/ (the only MLflow code), sweep/ (the only Optuna code), load
apps      the entry points: parse key=value overrides, call a service, print

Imports inside functions count as much as those at the top: a layer is about what a module needs, not when.
Those under `if TYPE_CHECKING:` are for annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lesson5"

CORE = {"lesson5", "lesson5.config", "lesson5.errors", "lesson5.callback", "lesson5.recorder", "lesson5.progress",
        "lesson5.learner", "lesson5.stages", "lesson5.slices", "lesson5.losses", "lesson5.metrics", "lesson5.bias",
        "lesson5.outcome", "lesson5.naming", "lesson5.plots", "lesson5.process", "lesson5.checks",
        "lesson5.components"}
CORE_PACKAGES = ("lesson5.data", "lesson5.models", "lesson5.optim")
APPS = {"lesson5.__main__", "lesson5.cli", "lesson5.report", "lesson5.claims", "lesson5.reproduce",
        "lesson5.transfer", "lesson5.interpret", "lesson5.recommend", "lesson5.sync", "lesson5.lr_find",
        "lesson5.sweep.__main__", "lesson5.dashboard"}
LEVEL = {"core": 0, "services": 1, "apps": 2}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> str:
    if name in CORE or name.startswith(tuple(p + "." for p in CORE_PACKAGES)) or name in CORE_PACKAGES:
        return "core"
    return "apps" if name in APPS else "services"


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def typing_only(tree: ast.Module) -> set[int]:
    """The ids of the nodes under `if TYPE_CHECKING:`: names for annotations, never imported at run time."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            out.update(id(n) for child in node.body for n in ast.walk(child))
    return out


def imports(path: Path) -> set[str]:
    """Every module `path` imports at run time, at any depth of its code."""
    tree = ast.parse(path.read_text())
    skip, out = typing_only(tree), set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def local(names: set[str], known: dict[str, Path]) -> set[str]:
    """The lesson5 modules among `names` (`from lesson5 import data` names the package lesson5.data)."""
    return {n for n in names if n in known}


def test_the_layer_map_knows_every_module():
    names = modules()
    assert "lesson5.learner" in names and "lesson5.tracking" in names  # the walk found the package
    for name in APPS:
        assert name in names, f"{name} is listed as an app but does not exist: update APPS"


def test_nothing_imports_a_higher_layer():
    known = modules()
    wrong = [f"{m} ({layer(m)}) imports {n} ({layer(n)})" for m, p in known.items()
             for n in local(imports(p), known) if LEVEL[layer(n)] > LEVEL[layer(m)]]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("library, home", [("mlflow", "lesson5.tracking"), ("optuna", "lesson5.sweep")])
def test_one_package_talks_to_each_service(library, home):
    """MLflow only in tracking/, Optuna only in sweep/ (outcome.py may name optuna.TrialPruned, to map it to a
    run's outcome, as it does without importing it)."""
    wrong = [m for m, p in modules().items() if not (m == home or m.startswith(home + "."))
             and any(n == library or n.startswith(library + ".") for n in imports(p))]
    assert not wrong, f"{library} is imported outside {home}: {wrong}"


def unit(name: str) -> str:
    """A subpackage (lesson5.optim, lesson5.tracking, ...) counts as one unit; a top-level module as itself."""
    parts = name.split(".")
    return ".".join(parts[:2])


def test_no_import_cycles():
    """No module, or subpackage taken whole, imports one that imports it back."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for m, p in known.items():
        graph.setdefault(unit(m), set()).update(unit(n) for n in local(imports(p), known) if unit(n) != unit(m))
    graph["lesson5"] = set()  # the package's own __init__ re-exports; that is not a layer's dependency
    cycles, state = [], {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join([*path[path.index(n):], n]))
            elif n not in state:
                visit(n, [*path, n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)
