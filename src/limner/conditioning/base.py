"""The one conditioning object every family and sampler passes around.

An encoder (see ``limner.conditioning``) turns raw inputs (captions, class ids) into a
:class:`Conditioning`; networks read its fields; samplers never look inside it, they only
concatenate or index it (classifier-free guidance batches cond and uncond together).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

import torch
from torch import Tensor


class CondKind(str, Enum):
    """What a run is conditioned on."""

    none = "none"
    class_ = "class"
    text = "text"


@dataclass
class CondInputs:
    """Raw, non-differentiable conditioning inputs for a batch, made on the CPU by
    ``encoder.prepare(...)`` and consumed by ``encoder(inputs, drop)``.

    Only the fields the encoder needs are set. Shapes: ``labels`` [B] int64; ``token_ids`` [B, T]
    int64 with ``token_mask`` [B, T] bool (True = real token); ``features`` [B, T, F] float and
    ``feature_mask`` [B, T] for frozen pretrained encoders whose outputs are precomputed.
    """

    batch_size: int
    labels: Tensor | None = None
    token_ids: Tensor | None = None
    token_mask: Tensor | None = None
    features: Tensor | None = None
    feature_mask: Tensor | None = None
    # Interpolation between two conditions (``limner interpolate``): the encoder encodes both
    # and blends row i as lerp(self_i, mix_with_i, mix_weight_i).
    mix_with: "CondInputs | None" = None
    mix_weight: Tensor | None = None

    def to(self, device: torch.device | str) -> "CondInputs":
        out = _map_tensors(self, lambda t: t.to(device, non_blocking=True))
        if self.mix_with is not None:
            out = replace(out, mix_with=self.mix_with.to(device))
        return out

    def __getitem__(self, index: slice | Tensor) -> "CondInputs":
        out = _map_tensors(self, lambda t: t[index])
        n = len(range(*index.indices(self.batch_size))) if isinstance(index, slice) else int(
            index.sum() if index.dtype == torch.bool else index.numel()
        )
        return replace(out, batch_size=n)


@dataclass
class Conditioning:
    """Encoded condition for a batch of B images.

    Attributes:
        vector: [B, D] pooled embedding added to the network's noise/time embedding, or None.
        tokens: [B, T, D] token embeddings for cross-attention, or None.
        mask:   [B, T] bool, True where ``tokens`` holds a real token (None = all real).
    An unconditional model uses ``Conditioning.empty(B)`` (all fields None).
    """

    vector: Tensor | None = None
    tokens: Tensor | None = None
    mask: Tensor | None = None
    batch_size: int = 0

    def __post_init__(self) -> None:
        for t in (self.vector, self.tokens, self.mask):
            if t is not None:
                self.batch_size = t.shape[0]
                break

    @classmethod
    def empty(cls, batch_size: int) -> "Conditioning":
        return cls(batch_size=batch_size)

    @property
    def is_empty(self) -> bool:
        return self.vector is None and self.tokens is None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Conditioning":
        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device)

        return _map_tensors(self, move)

    def __getitem__(self, index: slice | Tensor) -> "Conditioning":
        out = _map_tensors(self, lambda t: t[index])
        if out.is_empty:
            n = len(range(*index.indices(self.batch_size))) if isinstance(index, slice) else int(
                index.sum() if index.dtype == torch.bool else index.numel()
            )
            out.batch_size = n
        return out

    def repeat(self, n: int) -> "Conditioning":
        """Repeat every row ``n`` times (row-major: a a a b b b)."""
        out = _map_tensors(self, lambda t: t.repeat_interleave(n, dim=0))
        out.batch_size = self.batch_size * n
        return out

    def lerp(self, other: "Conditioning", weight: Tensor) -> "Conditioning":
        """Row-wise blend (1 - w) self + w other, w [B]; token sequences are right-padded to a
        common length and a position counts where a side with non-zero weight has a token."""
        if self.is_empty:
            return self
        w = weight.to(self.vector.device if self.vector is not None else self.tokens.device)
        vector = tokens = mask = None
        if self.vector is not None:
            vector = torch.lerp(self.vector, other.vector, w[:, None].to(self.vector.dtype))
        if self.tokens is not None:
            both = Conditioning.cat([self, other])
            B = self.batch_size
            a, b = both.tokens[:B], both.tokens[B:]
            tokens = torch.lerp(a, b, w[:, None, None].to(a.dtype))
            # a side's tokens count only where it has weight, so w = 0 / 1 are exactly self / other
            w_col = w[:, None]
            mask = (both.mask[:B] & (w_col < 1)) | (both.mask[B:] & (w_col > 0))
        return Conditioning(vector=vector, tokens=tokens, mask=mask, batch_size=self.batch_size)

    @staticmethod
    def cat(items: list["Conditioning"]) -> "Conditioning":
        """Concatenate along the batch; token sequences of different length are right-padded
        (padding masked out)."""
        first = items[0]
        total = sum(c.batch_size for c in items)
        if first.is_empty:
            return Conditioning.empty(total)
        vector = torch.cat([c.vector for c in items]) if first.vector is not None else None
        tokens = mask = None
        if first.tokens is not None:
            T = max(c.tokens.shape[1] for c in items)
            toks, masks = [], []
            for c in items:
                B, t, D = c.tokens.shape
                m = c.mask if c.mask is not None else torch.ones(B, t, dtype=torch.bool, device=c.tokens.device)
                if t < T:
                    c_tok = torch.cat([c.tokens, c.tokens.new_zeros(B, T - t, D)], dim=1)
                    m = torch.cat([m, m.new_zeros(B, T - t)], dim=1)
                else:
                    c_tok = c.tokens
                toks.append(c_tok)
                masks.append(m)
            tokens, mask = torch.cat(toks), torch.cat(masks)
        return Conditioning(vector=vector, tokens=tokens, mask=mask, batch_size=total)


def _map_tensors(obj: Any, fn) -> Any:
    changes = {
        f.name: fn(getattr(obj, f.name))
        for f in fields(obj)
        if isinstance(getattr(obj, f.name), Tensor)
    }
    return replace(obj, **changes)
