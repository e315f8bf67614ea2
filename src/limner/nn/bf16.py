"""Whether bfloat16 is fast on this machine's CPU, and one warning where it is not.

PyTorch's CPU bfloat16 convolutions and matrix products are oneDNN's, which need AVX-512 (or
AMX) vector instructions; on a CPU with AVX2 only (AMD Zen 1-3, most laptops) they fall back to
reference loops many times slower than float32. Sampling (``limner.generation.precision``),
training (``limner.training.trainer``) and ``limner env`` ask here; so does the convolution's
packed bfloat16 weight (``limner.nn.conv``), which oneDNN cannot reorder on such a CPU.
"""

from __future__ import annotations

import functools
import logging

import torch

__all__ = ["cpu_bf16_native", "slow_bf16_reason", "warn_if_slow_bf16"]

log = logging.getLogger(__name__)


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether oneDNN runs bfloat16 convolutions and matrix products on this CPU's own vector
    instructions (it asks the CPU: AVX-512 or AMX). Without them PyTorch's bfloat16 CPU ops fall
    back to reference loops; on a 2-core AVX2 AMD EPYC (family 25 model 1) a 3x3 convolution of
    16x64x16x16 took 118 ms in bfloat16 against 2.7 ms in float32, a matrix product 28x longer,
    and a training step of the small U-Net 24x longer."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a PyTorch build without oneDNN
        return False


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
