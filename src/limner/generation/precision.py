"""Sampling precision: float32, or bfloat16 autocast around a family's ``generate``.

bfloat16 autocast runs convolutions, matrix products and attention in bfloat16 (weights stay
float32); on the CPU, limner's U-Net then switches to channels-last with its compiled bfloat16
group norm (``limner.models.diffusion.unet``). Pixels differ slightly from float32, so the
generation record keeps the choice (its ``dtype``) and replays it.

On a CPU without bfloat16 vector instructions (AVX2 only: most laptops, AMD Zen 1-3) bfloat16 is
many times slower than float32; sampling and training then log one warning that says so
(:func:`warn_if_slow_bf16`), and ``limner env`` shows it.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

from limner.errors import UsageError
from limner.nn.conv import cpu_bf16_native

__all__ = ["cpu_bf16_native", "precision_context", "slow_bf16_reason", "warn_if_slow_bf16"]

log = logging.getLogger(__name__)


def slow_bf16_reason(device: torch.device | str) -> str | None:
    """Why bfloat16 autocast on ``device`` would be far slower than float32, or None."""
    if torch.device(device).type != "cpu" or cpu_bf16_native():
        return None
    return ("this CPU has no bfloat16 vector instructions oneDNN can use (it needs AVX-512 or AMX; "
            f"this one has {torch.backends.cpu.get_cpu_capability()}), so bfloat16 convolutions and "
            "matrix products run PyTorch's reference loops, 10-40x slower than float32: use fp32")


@functools.cache
def _warn_once(reason: str) -> None:
    log.warning("--precision bf16: %s", reason)


def warn_if_slow_bf16(precision: str, device: torch.device | str) -> None:
    """Log once per process when ``precision`` is "bf16" and ``device`` would run it slowly."""
    if precision == "bf16" and (reason := slow_bf16_reason(device)) is not None:
        _warn_once(reason)


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
