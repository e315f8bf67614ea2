"""Import direction: generation and training never import each other (directly or through the
modules they import), and limner.runs / limner.store stay below both (no torch)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "limner"


def imported_packages(package: str) -> set[str]:
    """The limner subpackages named by any import statement inside ``package`` (lazy ones too)."""
    found: set[str] = set()
    for path in (SRC / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "limner" and len(parts) > 1:
                    found.add(parts[1])
    return found


@pytest.mark.parametrize("package,forbidden", [
    ("generation", {"training"}),
    ("training", {"generation"}),
    ("runs", {"training", "generation", "evaluation", "models", "nn", "store", "server", "jobs", "cli"}),
    ("store", {"training", "generation", "evaluation", "models", "nn", "server", "jobs", "cli",
               "conditioning", "samplers"}),
])
def test_imports_point_down(package, forbidden):
    assert imported_packages(package) & forbidden == set()


def test_no_torch_import_in_store_or_runs():
    for package in ("store", "runs"):
        for path in (SRC / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    assert not any(a.name.split(".")[0] == "torch" for a in node.names), path
                if isinstance(node, ast.ImportFrom) and node.module:
                    assert node.module.split(".")[0] != "torch", path
