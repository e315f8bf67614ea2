"""Static audit of src/limner (RELIABILITY.md B.25): no unsafe deserialisation or code execution.

Fails the build on ``torch.load`` without ``weights_only=True``, ``pickle.load(s)`` (also via
``cPickle``/``dill``/``joblib``), ``eval``/``exec``, ``os.system``/``os.popen`` and any call with
``shell=True``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "limner"
FILES = sorted(SRC.rglob("*.py"))

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle"}
BANNED_BUILTINS = {"eval", "exec"}
BANNED_OS = {"system", "popen"}


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for Name/Attribute chains, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _weights_only_true(call: ast.Call) -> bool:
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def _problems(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in PICKLE_MODULES:
            if any(a.name in ("load", "loads", "Unpickler") for a in node.names):
                found.append((node.lineno, f"from {node.module} import load/loads/Unpickler"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, last = name.rpartition(".")
        if last == "load" and "torch" in head.split(".") and not _weights_only_true(node):
            found.append((node.lineno, f"{name}( without weights_only=True"))
        if head.split(".")[-1:] and head.split(".")[-1] in PICKLE_MODULES and last in ("load", "loads", "Unpickler"):
            found.append((node.lineno, f"{name}("))
        if name in BANNED_BUILTINS or name in {f"builtins.{b}" for b in BANNED_BUILTINS}:
            found.append((node.lineno, f"{name}("))
        if head == "os" and last in BANNED_OS:
            found.append((node.lineno, f"{name}("))
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append((node.lineno, f"{name or 'call'}(shell=...)"))
    return found


def test_audit_finds_what_it_should():
    bad = ast.parse(
        "import torch, pickle, os, subprocess\n"
        "torch.load(p)\n"
        "torch.load(p, weights_only=False)\n"
        "pickle.loads(b)\n"
        "eval('1')\n"
        "exec('x=1')\n"
        "os.system('ls')\n"
        "subprocess.run('ls', shell=True)\n"
        "from pickle import load\n"
    )
    assert len(_problems(bad)) == 8
    good = ast.parse("import torch\ntorch.load(p, weights_only=True)\nmodel.eval()\n")
    assert _problems(good) == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_source_has_no_unsafe_calls(path):
    problems = _problems(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    assert not problems, "\n".join(f"{path}:{line}: {what}" for line, what in problems)
