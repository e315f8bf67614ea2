"""The dynamics view's ``prompt`` for text-conditioned GAN and VAE runs: the VAE's decoder reads
the prompt through cross-attention, so its dynamics carry the attention maps of that prompt; the
GAN has no prompt-dependent part and refuses one, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from limner.errors import UsageError
from limner.explain import compute_view

pytestmark = pytest.mark.xdist_group("explain")  # one worker builds the tiny runs once (--dist loadgroup)


def _text_run(data: Path, out: Path, cache: Path, family: str) -> Path:
    """A text-conditioned (the data's captions) tiny run of ``family``, 2 steps at 16 px."""
    from limner.workflows import TrainOptions, train

    train(TrainOptions(data=data, out=out, family=family, preset="tiny", resolution=16, progress=False,
                       cache_dir=cache, explain=False,
                       train={"steps": 2, "batch_size": 4, "save_every": 2, "sample_every": 0,
                              "log_every": 1, "tensorboard": False}))
    return out


@pytest.fixture(scope="module")
def text_vae_run(tiny_data, tmp_path_factory, explain_cache) -> Path:
    return _text_run(tiny_data, tmp_path_factory.mktemp("runs") / "vae-text", explain_cache, "vae")


@pytest.fixture(scope="module")
def text_gan_run(tiny_data, tmp_path_factory, explain_cache) -> Path:
    return _text_run(tiny_data, tmp_path_factory.mktemp("runs") / "gan-text", explain_cache, "gan")


def test_text_vae_dynamics_carry_the_prompts_attention(text_vae_run, explain_cache):
    result = compute_view(text_vae_run, "dynamics", points=12, count=3, prompt="red heart",
                          cache_dir=explain_cache)
    maps = result.data["attention"]
    assert maps["prompt"] == "red heart"
    assert "attention" in result.images
    assert all(name.startswith("model.decoder.") for name in maps["blocks"])  # generation decodes
    # the same maps as the attention view's for that prompt and seed (they are that view's)
    alone = compute_view(text_vae_run, "attention", prompt="red heart", cache_dir=explain_cache).data
    assert maps["tokens"] == alone["tokens"]
    torch.testing.assert_close(maps["token_share"], alone["token_share"])
    # another prompt gives other tokens: the option reaches the model
    other = compute_view(text_vae_run, "dynamics", points=12, count=3, prompt="blue car smiling",
                         cache_dir=explain_cache).data["attention"]
    assert other["prompt"] == "blue car smiling" and other["tokens"] != maps["tokens"]


def test_text_vae_dynamics_default_prompt_is_a_training_caption(text_vae_run, explain_cache):
    from limner.explain.base import ExplainRun

    result = compute_view(text_vae_run, "dynamics", points=12, count=3, cache_dir=explain_cache)
    first = next(c for c in ExplainRun(text_vae_run, cache_dir=explain_cache).dataset.captions if c.strip())
    assert result.data["attention"]["prompt"] == first


def test_text_gan_dynamics_refuses_a_prompt(text_gan_run, explain_cache):
    with pytest.raises(UsageError) as err:
        compute_view(text_gan_run, "dynamics", count=2, prompt="red heart", cache_dir=explain_cache)
    assert err.value.field == "prompt"
    assert str(err.value).startswith("--prompt: ") and "pooled vector" in str(err.value)
    # without it the view answers, each generated image made for its real image's caption
    d = compute_view(text_gan_run, "dynamics", count=2, cache_dir=explain_cache).data
    assert len(d["D_fake_logits"]) == 2 and all(isinstance(c, str) for c in d["conditions"])
