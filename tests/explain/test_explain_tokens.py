"""Token transformers plug in through their hooks: the step view shows the mask and the loss per
token, the filmstrip the order tokens were unmasked (MaskGIT) or written (autoregressive)."""

from __future__ import annotations

import pytest
import torch

from limner.explain import compute_view
from limner.explain.base import ExplainRun
from limner.explain.filmstrip import replay, unmask_order

pytestmark = pytest.mark.xdist_group("explain")  # one worker builds the tiny runs once (--dist loadgroup)


def _png(run, tmp_path):
    from limner.generation.pipeline import generate, save_images
    from limner.generation.request import GenerationRequest

    return save_images(generate(GenerationRequest(run=str(run), prompt="red heart", seed=3, num=1)), tmp_path)[0]


def test_maskgit_step_and_unmasking_order(maskgit_run, tmp_path, explain_cache):
    step = compute_view(maskgit_run, "step", cache_dir=explain_cache)
    names = [p["name"] for p in step.data["panels"]]
    assert names == ["input", "tokens", "mask", "prediction", "loss per token"]
    assert step.data["optimizers"]["model"]["grad_norm"] > 0
    run = ExplainRun(maskgit_run, cache_dir=explain_cache)
    _, frames, final, png = replay(run, _png(maskgit_run, tmp_path))
    order = unmask_order(frames)
    grid = run.config["family"]["config"]["grid"]
    assert order.shape == (grid, grid)
    assert order.max() < len(frames)  # every position unmasked by the last step
    assert len(order.unique()) > 1  # over several steps


def test_autoregressive_writes_in_raster_order(autoregressive_run, tmp_path, explain_cache):
    run = ExplainRun(autoregressive_run, cache_dir=explain_cache)
    png = _png(autoregressive_run, tmp_path)
    _, frames, _, _ = replay(run, png)
    order = unmask_order(frames)
    assert torch.equal(order.flatten(), torch.arange(order.numel()))
    # the view draws it although the sampler has no picture per step: the image and its order
    film = compute_view(run, "filmstrip", image=str(png))
    assert film.data["unmask_order"] == order.tolist() and film.data["last_frame_equals_image"]
    assert "filmstrip" in film.images
    result = compute_view(run, "step")
    assert "loss per token" in [p["name"] for p in result.data["panels"]]
