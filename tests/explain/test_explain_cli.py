"""``limner explain`` writes a view's pictures and JSON; bad options are usage errors."""

from __future__ import annotations

import json

from limner.cli.main import main
from limner.explain import VIEWS
import pytest

pytestmark = pytest.mark.xdist_group("explain")  # one worker builds the tiny runs once (--dist loadgroup)



def test_cli_writes_png_and_json(text_run, tmp_path, explain_cache, capsys):
    out = tmp_path / "out"
    code = main(["explain", str(text_run), "step", "--out", str(out), "--seed", "3",
                 "--set", "indices=[1, 2]", "--cache-dir", str(explain_cache)])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"step.png", "layers.png", "step.json"}
    data = json.loads((out / "step.json").read_text())
    assert data["batch_indices"] == [1, 2]
    assert str(out / "step.png") in capsys.readouterr().out


def test_cli_usage_errors(text_run, capsys):
    assert main(["explain", str(text_run), "step", "--set", "colour=1"]) == 2
    assert "view 'step' has no option colour" in capsys.readouterr().err
    assert main(["explain", str(text_run), "features", "--prompt", "x"]) == 2
    assert "has no option prompt" in capsys.readouterr().err


def test_every_view_documents_its_options():
    assert list(VIEWS) == ["timeline", "step", "features", "filmstrip", "dynamics", "attention"]
    for view in VIEWS.values():
        assert view.summary and all(text for text in view.params.values())
        assert set(view.defaults()) == set(view.params)
