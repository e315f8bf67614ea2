"""Sampling precision: float32, or bfloat16 autocast around a family's ``generate``.

bfloat16 autocast runs convolutions, matrix products and attention in bfloat16 (weights stay
float32); on the CPU, limner's U-Net then switches to channels-last with its compiled bfloat16
group norm (``limner.models.diffusion.unet``). Pixels differ slightly from float32, so the
generation record keeps the choice (its ``dtype``) and replays it.

On a CPU without bfloat16 vector instructions (AVX2 only: most laptops, AMD Zen 1-3) bfloat16 is
many times slower than float32; sampling and training then log one warning that says so
(:func:`limner.nn.bf16.warn_if_slow_bf16`), and ``limner env`` shows it.
"""

from __future__ import annotations

import contextlib

import torch

from limner.errors import UsageError
from limner.nn.bf16 import warn_if_slow_bf16

__all__ = ["precision_context"]


def precision_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` for "bf16", nothing for "fp32" (a usage error otherwise,
    or where the device cannot run bfloat16)."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise UsageError(f"--precision: expected fp32 or bf16, got {precision!r}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("--precision bf16: this GPU has no bfloat16 support; use fp32")
    warn_if_slow_bf16(precision, device)
    return torch.autocast(device.type, dtype=torch.bfloat16)
