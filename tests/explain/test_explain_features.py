"""The feature maps are the network's: changing one level's weights changes that level's maps
and every later one, and leaves the earlier ones as they were."""

from __future__ import annotations

import pytest
import torch

from limner.explain import compute_view
from limner.explain.features import level_activations
from limner.explain.hooks import hooks_for
from limner.generation.pipeline import load_run

pytestmark = pytest.mark.xdist_group("explain")  # one worker builds the tiny runs once (--dist loadgroup)



@pytest.mark.parametrize("fixture", ["text_run", "gan_run", "vae_run"])
def test_changed_weights_change_the_feature_maps(fixture, request):
    family = load_run(request.getfixturevalue(fixture)).family
    probe = hooks_for(family).feature_probe(family)
    x = torch.rand(2, family.config.channels, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    before = level_activations(probe, x)
    names = [n for n, _ in probe.levels]
    assert list(before) == names and len(names) >= 4
    k = 2  # perturb the third level's own weights
    with torch.no_grad():
        for p in probe.levels[k][1].parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(4)) * 0.5)
    after = level_activations(probe, x)
    for i, name in enumerate(names):
        same = torch.equal(before[name], after[name])
        assert same == (i < k), (name, i)


def test_features_view_shows_levels_and_patches(text_run, explain_cache):
    result = compute_view(text_run, "features", index=2, top=4, patches=4, search=12,
                          cache_dir=explain_cache)
    levels = result.data["levels"]
    assert [lv["name"] for lv in levels][0].startswith("input conv")
    assert all(len(lv["top_channels"]) == 4 for lv in levels)
    chosen = result.data["channel"]
    assert chosen["level"].startswith("middle") and len(chosen["patches"]) == 4
    acts = [p["activation"] for p in chosen["patches"]]
    assert acts == sorted(acts, reverse=True)
    assert result.images["features"].width > 300
