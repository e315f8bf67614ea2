"""Euler's method on the probability-flow ODE.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM,
arXiv 2206.00364): Algorithm 1 without its second-order correction. First order: the error
falls like 1/steps. Notation: sigma = t (EDM's sigma(t) = t), d = dx/dsigma (eq. 3).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from limner.samplers.base import (
    Denoiser,
    Generators,
    SamplerName,
    SamplerSpec,
    StepCallback,
    denoise,
    register_sampler,
    report,
    to_d,
)


@register_sampler(SamplerName.euler, SamplerSpec(order=1, stochastic=False))
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Any,
    *,
    generator: Generators = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Euler sampler (Karras et al. 2022, Algorithm 1 first-order step); deterministic.

    Args:
        x: [B, C, H, W] noise already scaled by ``sigmas[0]``.
        sigmas: [N + 1] decreasing noise levels, normally ending in 0.
        generator: unused (accepted for the common contract).
    """
    sigma = sigmas.tolist()
    for i in range(len(sigma) - 1):
        denoised = denoise(denoiser, x, sigma[i], cond)
        report(callback, i, sigma, x, denoised)
        x = x + (sigma[i + 1] - sigma[i]) * to_d(x, sigma[i], denoised)
    return x
