"""Tiny runs for the explain tests: a few steps of each family at 16 px, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


def _train(data: Path, out: Path, cache: Path, family: str, steps: int = 4, cond: str | None = None,
           explain: bool = True, preset: str = "tiny", **family_options) -> Path:
    from limner.workflows import TrainOptions, train

    train(TrainOptions(
        data=data, out=out, family=family, preset=preset, resolution=16, progress=False,
        cache_dir=cache, cond=cond, family_options=family_options, explain=explain,
        train={"steps": steps, "batch_size": 4, "save_every": 2, "sample_every": 2,
               "log_every": 1, "tensorboard": False},
    ))
    return out


@pytest.fixture(scope="session")
def explain_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("explain-cache")


@pytest.fixture(scope="session")
def text_run(tiny_data, tmp_path_factory, explain_cache) -> Path:
    """A text-conditioned pixel diffusion run (tiny U-Net with cross-attention), 4 steps."""
    return _train(tiny_data, tmp_path_factory.mktemp("runs") / "text", explain_cache, "diffusion")


@pytest.fixture(scope="session")
def gan_run(tiny_data, tmp_path_factory, explain_cache) -> Path:
    return _train(tiny_data, tmp_path_factory.mktemp("runs") / "gan", explain_cache, "gan",
                  cond="none")


@pytest.fixture(scope="session")
def vae_run(tiny_data, tmp_path_factory, explain_cache) -> Path:
    return _train(tiny_data, tmp_path_factory.mktemp("runs") / "vae", explain_cache, "vae",
                  cond="none")


@pytest.fixture(scope="session")
def ldm_run(tiny_data, vae_run, tmp_path_factory, explain_cache) -> Path:
    return _train(tiny_data, tmp_path_factory.mktemp("runs") / "ldm", explain_cache,
                  "latent-diffusion", cond="none", vae=vae_run)


@pytest.fixture(scope="session")
def vq_run(tiny_data, tmp_path_factory, explain_cache) -> Path:
    return _train(tiny_data, tmp_path_factory.mktemp("runs") / "vq", explain_cache, "vae",
                  cond="none", preset="vq-tiny", explain=False)


@pytest.fixture(scope="session")
def maskgit_run(tiny_data, vq_run, tmp_path_factory, explain_cache) -> Path:
    return _train(tiny_data, tmp_path_factory.mktemp("runs") / "maskgit", explain_cache, "maskgit",
                  vq=vq_run, explain=False)


@pytest.fixture(scope="session")
def autoregressive_run(tiny_data, vq_run, tmp_path_factory, explain_cache) -> Path:
    return _train(tiny_data, tmp_path_factory.mktemp("runs") / "ar", explain_cache, "autoregressive",
                  vq=vq_run, explain=False)
