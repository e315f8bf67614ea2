"""Live capture: RUN/explain/ is kept up to date at every checkpoint, and training is unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from limner.explain import compute_view

pytestmark = pytest.mark.xdist_group("explain")  # one worker builds the tiny runs once (--dist loadgroup)


def test_live_capture_writes_frames_and_views(text_run, gan_run):
    for run in (text_run, gan_run):
        explain = run / "explain"
        assert sorted(p.name for p in (explain / "timeline").glob("step_*.png")) == [
            "step_000002.png", "step_000004.png"]
        for name in ("timeline.png", "timeline.gif", "compare.png", "timeline.json", "dynamics.png",
                     "dynamics.json"):
            assert (explain / name).is_file(), (run, name)
        assert json.loads((explain / "timeline.json").read_text())["steps"] == [2, 4]
        live = json.loads((explain / "live.json").read_text())
        assert live["step"] == 4 and 0 < live["seconds"] <= live["total_seconds"]


def test_timeline_reads_the_live_frames(text_run, explain_cache):
    result = compute_view(text_run, "timeline", generate_missing=False, cache_dir=explain_cache)
    assert result.data["source"] == {2: "live", 4: "live"}
    assert len(result.animations["timeline"]) == 2
    assert set(result.data["curves"]) >= {"loss", "grad_norm"}


def test_live_capture_does_not_change_training(gan_run, tiny_data, tmp_path, explain_cache):
    """The same run without the callback ends with bitwise-identical weights."""
    from safetensors.torch import load_file

    from tests.explain.conftest import _train

    other = _train(tiny_data, tmp_path / "gan", explain_cache, "gan", cond="none", explain=False)
    assert not (other / "explain").exists()
    for step in ("step_000002", "step_000004"):
        for name in ("G", "D", "G_ema"):
            a = load_file(gan_run / "checkpoints" / step / f"{name}.safetensors")
            b = load_file(other / "checkpoints" / step / f"{name}.safetensors")
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a), (step, name)
