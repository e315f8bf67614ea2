"""The small text encoder limner trains jointly with the image model from a dataset's captions.

A word-level tokenizer (``tokenizer.py``) feeds a pre-norm Transformer encoder (Vaswani et al.
2017, "Attention Is All You Need"; pre-norm placement as in Xiong et al. 2020, "On Layer
Normalization in the Transformer Architecture") with token and learned position embeddings and
padding masked out of attention. It returns per-token embeddings for cross-attention and a pooled
vector (masked mean through a projection), as in GLIDE's text encoder (Nichol et al. 2022).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from limner.conditioning.base import CondInputs, Conditioning
from limner.conditioning.config import EncoderConfig
from limner.conditioning.encoder_base import TextCondEncoder
from limner.conditioning.tokenizer import PAD_ID, WordTokenizer

# ----------------------------------------------------------------------------
# Blocks


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key padding mask."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, T, D], mask [B, T] bool (True = real token) → [B, T, D]."""
        B, T, D = x.shape
        # [B, T, 3D] → 3 × [B, heads, T, D/heads]
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer encoder block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, T, D], mask [B, T] → [B, T, D]."""
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


# ----------------------------------------------------------------------------
# Encoder


class TrainedTextEncoder(TextCondEncoder):
    """Captions → tokens [B, T, D] + mask [B, T] and vector [B, D], trained from scratch.

    Every caption starts with ``<bos>``, so the empty caption is one real token: a valid input
    close to, but distinct from, the learned null condition.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        D = config.dim
        self.tokenizer = WordTokenizer(config.vocab or [], config.max_tokens)
        self.token_embedding = nn.Embedding(len(self.tokenizer), D, padding_idx=PAD_ID)
        self.position_embedding = nn.Parameter(torch.zeros(config.max_tokens, D))
        self.blocks = nn.ModuleList(TransformerBlock(D, config.heads) for _ in range(config.layers))
        self.norm = nn.LayerNorm(D)
        self.pool = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self._init_embeddings()

    def _init_embeddings(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)
        with torch.no_grad():
            self.token_embedding.weight[PAD_ID].zero_()

    def prepare(
        self,
        captions: list[str] | None = None,
        labels: Sequence[int | str] | Tensor | None = None,
        batch_size: int | None = None,
    ) -> CondInputs:
        """Tokenise: token_ids [B, T] int64 and token_mask [B, T] bool, T <= max_tokens."""
        captions = self._check_captions(captions, labels, batch_size)
        ids, mask = self.tokenizer.batch(captions)
        return CondInputs(batch_size=len(captions), token_ids=ids, token_mask=mask)

    def encode(self, inputs: CondInputs) -> Conditioning:
        """Run the transformer: tokens [B, T, D] (zero where masked), mask [B, T], vector [B, D]."""
        ids, mask = inputs.token_ids, inputs.token_mask
        T = ids.shape[1]
        x = self.token_embedding(ids) + self.position_embedding[:T]  # [B, T, D]
        for block in self.blocks:
            x = block(x, mask)
        tokens = self.norm(x) * mask[..., None]
        pooled = tokens.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # masked mean, [B, D]
        return Conditioning(vector=self.pool(pooled), tokens=tokens, mask=mask)

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` outside the training vocabulary (they become ``<unk>``)."""
        return self.tokenizer.unknown_words(text)
