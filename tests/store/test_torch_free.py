"""``import limner`` and the store load without torch; the torch version gate still refuses
old releases where torch is used."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from limner.torchcheck import torch_version_ok


def test_store_and_runs_import_with_torch_blocked(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        import limner, limner.store, limner.runs, limner.cli.gallery_cmd
        from pathlib import Path
        from limner.store import Store
        store = Store.open(None, home=Path({str(tmp_path)!r}))
        user = store.create_user("alice", None)
        assert store.search(user, "x", mode="text").items == []
        store.close()
        try:
            import limner.nn
        except ImportError:
            print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("version,ok", [("2.13.0", True), ("2.13.0+cpu", True), ("2.6.0", True),
                                        ("2.5.1", False), ("1.13.1+cu117", False), ("3.0.0", True)])
def test_version_gate(version, ok):
    assert torch_version_ok(version) is ok


def test_old_torch_is_refused_at_first_use():
    script = textwrap.dedent("""
        import torch
        torch.__version__ = "2.5.1"
        try:
            import limner.training
        except ImportError as e:
            print(e)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "limner needs torch>=2.6" in proc.stdout, proc.stderr
