"""Each family's dynamics view reads its own model and metrics."""

from __future__ import annotations

import math

import pytest
import torch

from limner.explain import compute_view
from limner.explain.dynamics import pca_2d

pytestmark = pytest.mark.xdist_group("explain")  # one worker builds the tiny runs once (--dist loadgroup)



def test_gan_dynamics_scores_real_and_fake(gan_run, explain_cache):
    result = compute_view(gan_run, "dynamics", count=4, cache_dir=explain_cache)
    d = result.data
    assert len(d["D_real_logits"]) == len(d["D_fake_logits"]) == 4
    for logit, prob in zip(d["D_real_logits"], d["D_real_prob"]):
        assert prob == pytest.approx(1 / (1 + math.exp(-logit)))
    # the logits are D's: recompute the real ones directly
    from limner.generation.pipeline import load_run
    from limner.explain.base import ExplainRun
    from limner.explain.dynamics import _real_batch

    family = load_run(gan_run).family
    family.D.eval()
    real, idx = _real_batch(ExplainRun(gan_run, cache_dir=explain_cache), 4, 0)
    assert idx.tolist() == d["real_indices"]
    with torch.no_grad():
        torch.testing.assert_close(family.D(real.images).tolist(), d["D_real_logits"])


def test_vae_dynamics_maps_the_training_set(vae_run, explain_cache):
    result = compute_view(vae_run, "dynamics", points=12, count=4, cache_dir=explain_cache)
    assert len(result.data["coords"]) == 12 and len(result.data["coords"][0]) == 2
    share = result.data["explained_variance"]
    assert 0 < share[1] <= share[0] <= 1


def test_pca_2d_finds_the_main_axis():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(200, generator=gen)
    x = torch.outer(t, torch.tensor([3.0, 4.0, 0.0])) + 0.01 * torch.randn(200, 3, generator=gen)
    coords, share = pca_2d(x)
    assert share[0] > 0.99
    assert abs(torch.corrcoef(torch.stack([coords[:, 0], t]))[0, 1]) > 0.999


@pytest.mark.parametrize("fixture", ["text_run", "ldm_run"])
def test_diffusion_dynamics_loss_per_noise_level(fixture, request, explain_cache):
    result = compute_view(request.getfixturevalue(fixture), "dynamics", cache_dir=explain_cache)
    assert len(result.data["loss"]) == len(result.data["sigmas"])
    assert all(v > 0 for v in result.data["loss"])
    # a text run's dynamics carry its attention maps, a run without text does not
    assert ("attention" in result.images) == (fixture == "text_run")
