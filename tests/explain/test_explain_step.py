"""The step view runs the family's real training step: its per-layer gradient norms are
autograd's on the same batch, and the run folder is left as it was."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from limner.explain import compute_view
from limner.explain.base import ExplainRun

pytestmark = pytest.mark.xdist_group("explain")  # one worker builds the tiny runs once (--dist loadgroup)



def _independent_layer_norms(run_dir, indices, seed, cache):
    """Autograd on the same batch and noise, computed without the explain code."""
    from limner.generation.pipeline import load_run
    from limner.training.data_order import make_batch

    run = ExplainRun(run_dir, cache_dir=cache)
    family = load_run(run_dir, ema=False).family
    family.model.train()
    batch = make_batch(run.dataset, np.asarray(indices), np.zeros(len(indices), dtype=bool))
    gen = torch.Generator().manual_seed(seed)
    inputs, drop = family._condition_inputs(batch, batch.images.device, gen)
    loss = family.loss_fn(family.model, batch.images, inputs, drop, gen).mean()
    named = [(n, p) for n, p in family.model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    sums: dict[str, float] = {}
    for (name, _), g in zip(named, grads):
        if g is not None:
            layer = "model." + name.rsplit(".", 1)[0] if "." in name else "model"
            sums[layer] = sums.get(layer, 0.0) + float(g.double().square().sum())
    return {k: math.sqrt(v) for k, v in sums.items()}, float(loss.detach())


def test_layer_gradient_norms_equal_autograd(text_run, explain_cache):
    indices, seed = [3, 0, 7, 5], 1234
    before = {p: p.stat().st_mtime_ns for p in text_run.rglob("*") if p.is_file()}
    result = compute_view(text_run, "step", indices=indices, seed=seed, cache_dir=explain_cache)
    expected, loss = _independent_layer_norms(text_run, indices, seed, explain_cache)
    got = {row["name"]: row["grad_norm"] for row in result.data["layers"]}
    assert set(got) == set(expected) and len(got) > 20
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-9), name
    assert result.data["metrics"]["loss"] == pytest.approx(loss, rel=1e-5)
    # the update really happened, and nothing in the run folder changed
    assert sum(row["update_norm"] > 0 for row in result.data["layers"]) > 20
    assert {p: p.stat().st_mtime_ns for p in text_run.rglob("*") if p.is_file()} == before
    names = [p["name"] for p in result.data["panels"]]
    assert names[:2] == ["input", "noise added"] and "loss per pixel" in names
    assert result.images["step"].width > 200 and result.images["layers"].height > 200


def test_default_batch_is_the_runs_next_batch(text_run, explain_cache):
    from limner.training.checkpoint import find_latest_valid, load_checkpoint_state
    from limner.training.data_order import DataOrder

    state = load_checkpoint_state(find_latest_valid(text_run))
    run = ExplainRun(text_run, cache_dir=explain_cache)
    cfg = run.config["train"]
    order = DataOrder(len(run.dataset.images), cfg["seed"], cfg["hflip"])
    order.load_state_dict(state["data_order"])
    expected, flips = order.take(cfg["batch_size"])
    result = compute_view(run, "step")
    assert result.data["batch_indices"] == expected.tolist()
    assert result.data["flips"] == flips.tolist()


@pytest.mark.parametrize("fixture", ["gan_run", "vae_run", "ldm_run"])
def test_every_family_opens_its_step(fixture, request, explain_cache):
    run_dir = request.getfixturevalue(fixture)
    result = compute_view(run_dir, "step", cache_dir=explain_cache)
    optimizers = result.data["optimizers"]
    assert optimizers and all(v["grad_norm"] > 0 and v["update_norm"] > 0 for v in optimizers.values())
    assert len(result.data["panels"]) >= 3
    result.write(run_dir.parent / f"out-{fixture}")
    assert (run_dir.parent / f"out-{fixture}" / "step.json").is_file()
