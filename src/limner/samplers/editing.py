"""Image-to-image and inpainting with any registered sampler.

- Image-to-image is SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with
  Stochastic Differential Equations"): noise the input to the level the strength picks on the
  run's own schedule, then denoise from there with the prompt. Strength 1 starts from pure noise
  (the input is forgotten), strength 0 returns the input.
- Inpainting follows RePaint (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising
  Diffusion Probabilistic Models"): after every step the known region (mask 0) is replaced by the
  input noised to the new level, and each step is resampled ``resample`` times (step down, then
  add the noise back up to the step's start) so the generated region harmonises with its borders.
  Steps run one interval at a time, so multistep samplers act as their first-order form here.

Both work in whatever space the denoiser works in (pixels in [-1, 1], or a VAE's scaled latents);
the caller composites the final pixels so the known region is bitwise the input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from limner.samplers.base import (Denoiser, Generators, SamplerError, StepCallback, get_sampler,
                                  randn_like_rows)
from limner.samplers.schedules import get_sigmas


def start_index(steps: int, strength: float) -> int:
    """Index into a ``steps``-step schedule where SDEdit starts: the last ``round(steps *
    strength)`` steps run (at least one when strength > 0)."""
    if not 0.0 <= strength <= 1.0:
        raise SamplerError(f"strength must be in [0, 1], got {strength}")
    run = 0 if strength == 0 else max(1, round(steps * strength))
    return steps - run


def edit_sample(
    denoiser: Denoiser,
    x0: Tensor,
    cond: Any,
    *,
    sampler: str,
    steps: int,
    sigma_min: float,
    sigma_max: float,
    schedule: str = "karras",
    strength: float = 1.0,
    mask: Tensor | None = None,
    resample: int = 1,
    generator: Generators = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Denoise ``x0`` [B, C, H, W] (the input in the denoiser's space) from the level ``strength``
    picks; with ``mask`` [B, 1, H, W] (1 = regenerate, 0 = keep), inpaint RePaint-style.

    Noise comes from ``generator`` (one per row for per-image seeds), in a fixed order, so the
    result is a function of the inputs and seeds."""
    if resample < 1:
        raise SamplerError(f"resample must be >= 1, got {resample}")
    fn = get_sampler(sampler)
    sigmas = get_sigmas(schedule, steps, sigma_min, sigma_max, device=x0.device)
    sub = sigmas[start_index(steps, strength):]
    if len(sub) < 2:  # strength 0: nothing to do
        return x0.clone()
    x = x0 + float(sub[0]) * randn_like_rows(x0, generator)
    if mask is None:
        return fn(denoiser, x, sub, cond, generator=generator, callback=callback)
    mask = mask.to(x0.dtype)
    keep = 1.0 - mask
    n = len(sub) - 1
    for i in range(n):
        s_hi, s_lo = float(sub[i]), float(sub[i + 1])
        for u in range(resample):
            x_in = x
            x = fn(denoiser, x_in, sub[i:i + 2], cond, generator=generator,
                   callback=_shifted(callback, i, n) if u == resample - 1 else None)
            known = x0 + s_lo * randn_like_rows(x0, generator) if s_lo > 0 else x0
            x = mask * x + keep * known
            if u < resample - 1:  # back up to s_hi with fresh noise and redo the step
                x = x + math.sqrt(max(s_hi ** 2 - s_lo ** 2, 0.0)) * randn_like_rows(x, generator)
    return x


def _shifted(callback: StepCallback | None, i: int, n: int) -> StepCallback | None:
    """A callback that reports the one-interval call as step ``i`` of ``n``."""
    if callback is None:
        return None

    def report(info: dict[str, Any]) -> None:
        callback({**info, "i": i, "steps": n})

    return report


def latent_mask(mask: Tensor, factor: int) -> Tensor:
    """A pixel mask [B, 1, H, W] (1 = regenerate) at latent resolution: a latent cell is
    regenerated when any pixel it covers is (max-pooling), so the border is generated too."""
    if factor == 1:
        return mask
    return torch.nn.functional.max_pool2d(mask.float(), kernel_size=factor, stride=factor)
