"""The encoder interface every conditioning encoder implements, and the condition dropout
shared by all of them.

Condition dropout follows classifier-free guidance (Ho & Salimans 2022, "Classifier-Free
Diffusion Guidance"): during training a random subset of rows is replaced by a learned null
condition, so one network learns both the conditional and the unconditional model; at sampling
the null (or a negative prompt) is the unconditional branch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from limner.conditioning.base import CondInputs, CondKind, Conditioning
from limner.conditioning.config import EncoderConfig
from limner.errors import UsageError


class CondEncoder(nn.Module):
    """Turns captions or labels into a ``Conditioning`` in two steps: ``prepare`` (CPU,
    non-differentiable: tokenise, look up, run frozen models) then ``forward`` (trainable).

    Subclasses implement ``prepare``, ``encode`` and ``null``; ``forward`` adds condition dropout.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.kind: CondKind = config.kind
        self.dim: int = config.dim

    def prepare(
        self,
        captions: list[str] | None = None,
        labels: Sequence[int | str] | Tensor | None = None,
        batch_size: int | None = None,
    ) -> CondInputs:
        """Raw inputs for a batch (CPU tensors); give captions, labels or just batch_size."""
        raise NotImplementedError

    def encode(self, inputs: CondInputs) -> Conditioning:
        """The condition for every row of ``inputs`` (no dropout)."""
        raise NotImplementedError

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        """The learned unconditional condition, used by CFG when there is no negative prompt."""
        raise NotImplementedError

    def forward(self, inputs: CondInputs, drop: Tensor | None = None) -> Conditioning:
        """Encode ``inputs``; rows where ``drop`` [B] is True get the null condition (CFG training).

        Args:
            inputs: from ``prepare``; moved to this encoder's device if needed.
            drop: [B] bool, or None for no dropout.
        """
        inputs = inputs.to(self.device)
        if inputs.mix_with is not None:
            cond = self.encode(replace(inputs, mix_with=None, mix_weight=None))
            cond = cond.lerp(self.encode(inputs.mix_with), inputs.mix_weight)
        else:
            cond = self.encode(inputs)
        return cond if drop is None else self._apply_drop(cond, drop)

    def prepare_request(self, request: Any, batch_size: int) -> CondInputs | None:
        """Inputs for a generation request (``BatchRequest``): its prompts or labels (ids or
        class names), blended with ``mix_prompts``/``mix_labels`` by ``mix_weights`` when the
        request interpolates between two conditions. None for an unconditional encoder."""
        if self.kind == CondKind.none:
            return None
        inputs = self._prepare_named(request.prompts, request.labels, batch_size)
        mix_prompts = getattr(request, "mix_prompts", None)
        mix_labels = getattr(request, "mix_labels", None)
        if mix_prompts is None and mix_labels is None:
            return inputs
        other = self._prepare_named(mix_prompts, mix_labels, batch_size)
        weight = torch.tensor(request.mix_weights, dtype=torch.float32)
        return replace(inputs, mix_with=other, mix_weight=weight)

    def _prepare_named(self, prompts, labels, batch_size: int) -> CondInputs:
        if labels is not None:
            labels = [self.label_index(lab) for lab in labels]
        return self.prepare(captions=prompts, labels=labels, batch_size=batch_size)

    def label_index(self, label: int | str) -> int:
        """Class id of ``label`` (id or class name); only class encoders have labels."""
        raise UsageError(f"this run is conditioned on {self.kind.value!r}, not on class labels")

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` the encoder cannot represent (empty unless it has a fixed vocabulary)."""
        return []

    @property
    def device(self) -> torch.device:
        """Device of the trainable weights (CPU for an encoder without any)."""
        tensor = next(iter(self.parameters()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def _apply_drop(self, cond: Conditioning, drop: Tensor) -> Conditioning:
        """Replace rows where ``drop`` is True by ``null``; tokens are right-padded to match."""
        B = cond.batch_size
        if drop.shape != (B,):
            raise ValueError(f"drop must have shape [{B}], got {list(drop.shape)}")
        if cond.is_empty:
            return cond
        drop = drop.to(device=self.device, dtype=torch.bool)
        null = self.null(B, self.device)
        vector = tokens = mask = None
        if cond.vector is not None:
            vector = torch.where(drop[:, None], null.vector.to(cond.vector.dtype), cond.vector)
        if cond.tokens is not None:
            null_tokens, null_mask = _pad_tokens(null, cond.tokens.shape[1])
            mask = cond.mask if cond.mask is not None else _all_true(cond.tokens)
            tokens = torch.where(drop[:, None, None], null_tokens.to(cond.tokens.dtype), cond.tokens)
            mask = torch.where(drop[:, None], null_mask, mask)
        return Conditioning(vector=vector, tokens=tokens, mask=mask, batch_size=B)

    def _batch_size(self, captions: list[str] | None, labels: object, batch_size: int | None) -> int:
        """Batch size implied by the given inputs; UsageError when they disagree."""
        sizes = {len(x) for x in (captions, labels) if x is not None}
        if batch_size is not None:
            sizes.add(batch_size)
        if len(sizes) != 1:
            raise UsageError(
                "prepare() needs captions, labels or batch_size" if not sizes
                else f"prepare() got inputs of different batch sizes: {sorted(sizes)}"
            )
        return sizes.pop()


class TextCondEncoder(CondEncoder):
    """Shared null condition of the text encoders: a learned vector [D] and one learned token
    [1, D] (mask [B, 1] True), distinct from any caption, the empty caption included."""

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.null_vector = nn.Parameter(torch.randn(config.dim) * 0.02)
        self.null_token = nn.Parameter(torch.randn(1, config.dim) * 0.02)

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        """The learned null condition: vector [B, D], tokens [B, 1, D], mask [B, 1]."""
        device = self.device if device is None else device
        vector = self.null_vector.to(device).expand(batch_size, -1).contiguous()
        tokens = self.null_token.to(device).expand(batch_size, -1, -1).contiguous()
        mask = torch.ones(batch_size, 1, dtype=torch.bool, device=device)
        return Conditioning(vector=vector, tokens=tokens, mask=mask, batch_size=batch_size)

    def _check_captions(self, captions: list[str] | None, labels: object, batch_size: int | None) -> list[str]:
        """The captions, validated; text encoders need one string per row."""
        self._batch_size(captions, labels, batch_size)
        if captions is None:
            raise UsageError("this run is text-conditioned: give one caption per image")
        if not all(isinstance(c, str) for c in captions):
            raise UsageError("captions must be strings")
        return list(captions)


def _pad_tokens(cond: Conditioning, T: int) -> tuple[Tensor, Tensor]:
    """``cond``'s tokens and mask right-padded (zeros, masked out) to length T."""
    B, t, D = cond.tokens.shape
    mask = cond.mask if cond.mask is not None else _all_true(cond.tokens)
    if t == T:
        return cond.tokens, mask
    pad = cond.tokens.new_zeros(B, T - t, D)
    return torch.cat([cond.tokens, pad], dim=1), torch.cat([mask, mask.new_zeros(B, T - t)], dim=1)


def _all_true(tokens: Tensor) -> Tensor:
    return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
