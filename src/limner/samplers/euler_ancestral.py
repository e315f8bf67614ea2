"""Euler ancestral sampling.

Each step of the probability-flow ODE (Karras et al. 2022, arXiv 2206.00364, eq. 4) is split, as
in Crowson's k-diffusion, into a deterministic Euler step from sigma_i down to sigma_down and fresh
Gaussian noise of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_{i+1}^2. With eta = 1,
sigma_up is the std of the DDPM posterior q(x_{i+1} | x_i, x0) (Ho et al. 2020, arXiv 2006.11239,
eq. 7) mapped to the VE form, i.e. ancestral sampling; eta scales it (0 = Euler).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from limner.samplers.base import (
    Denoiser,
    Generators,
    SamplerName,
    SamplerSpec,
    StepCallback,
    denoise,
    randn_like_rows,
    register_sampler,
    report,
    to_d,
)


@register_sampler(SamplerName.euler_ancestral, SamplerSpec(order=1, stochastic=True))
def sample_euler_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Any,
    *,
    generator: Generators = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
) -> Tensor:
    """Euler ancestral sampler (Euler step to sigma_down, then noise of std sigma_up).

    Args:
        x: [B, C, H, W] noise already scaled by ``sigmas[0]``.
        sigmas: [N + 1] decreasing noise levels, normally ending in 0.
        generator: per-step noise (see ``randn_like_rows``).
        eta: scale of sigma_up, 1 = ancestral sampling, 0 = deterministic Euler.
    """
    sigma = sigmas.tolist()
    for i in range(len(sigma) - 1):
        denoised = denoise(denoiser, x, sigma[i], cond)
        report(callback, i, sigma, x, denoised)
        sigma_down, sigma_up = ancestral_split(sigma[i], sigma[i + 1], eta)
        x = x + (sigma_down - sigma[i]) * to_d(x, sigma[i], denoised)
        if sigma_up > 0:
            x = x + sigma_up * randn_like_rows(x, generator)
    return x


def ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) for a step sigma -> sigma_next; sigma_up is capped at sigma_next."""
    # eta = 1: sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2, the posterior variance
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(sigma**2 - sigma_next**2) / sigma)
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    return sigma_down, sigma_up
