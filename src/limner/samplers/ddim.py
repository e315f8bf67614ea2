"""DDIM with its eta parameter, written in noise-level (sigma) space.

Song et al. 2020, "Denoising Diffusion Implicit Models" (arXiv 2010.02502), eqs. 12 and 16. The
paper works with VP latents x_VP and cumulative alphas abar; this module uses the VE form of
``limner.samplers`` through

    sigma = sqrt((1 - abar) / abar),    x = x_VP / sqrt(abar)

so eq. 12, divided by sqrt(abar_{i+1}), becomes

    x_{i+1} = x0_hat + sqrt(sigma_{i+1}^2 - s^2) eps_hat + s z,   eps_hat = (x_i - x0_hat) / sigma_i

with s = sigma_eta(t) / sqrt(abar_{i+1}) and eq. 16's
sigma_eta(t)^2 = eta^2 (1 - abar_{i+1}) / (1 - abar_i) (1 - abar_i / abar_{i+1}).

eta = 0 is deterministic and is exactly Euler's method in this parameterisation (Karras et al. 2022,
arXiv 2206.00364, Sec. 3); eta = 1 gives DDPM-like ancestral sampling.
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
)


@register_sampler(SamplerName.ddim, SamplerSpec(order=1, stochastic=False))
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Any,
    *,
    generator: Generators = None,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM sampler (Song et al. 2020, eq. 12) with eta (eq. 16) in sigma space.

    Args:
        x: [B, C, H, W] noise already scaled by ``sigmas[0]``.
        sigmas: [N + 1] decreasing noise levels, normally ending in 0.
        generator: noise for eta > 0.
        eta: 0 = deterministic DDIM, 1 = DDPM-like posterior noise; capped so s <= sigma_{i+1}.
    """
    sigma = sigmas.tolist()
    for i in range(len(sigma) - 1):
        x0_hat = denoise(denoiser, x, sigma[i], cond)
        report(callback, i, sigma, x, x0_hat)
        eps_hat = (x - x0_hat) / sigma[i]
        s = min(_ddim_noise_level(sigma[i], sigma[i + 1], eta), sigma[i + 1])
        x = x0_hat + math.sqrt(sigma[i + 1] ** 2 - s**2) * eps_hat
        if s > 0:
            x = x + s * randn_like_rows(x, generator)
    return x


def _ddim_noise_level(sigma: float, sigma_next: float, eta: float) -> float:
    """s = sigma_eta / sqrt(abar_next): eq. 16's std, rescaled to the VE form."""
    # 1 - abar = sigma^2 / (1 + sigma^2) avoids cancellation at small sigma
    abar, abar_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    one_minus_abar, one_minus_abar_next = (
        sigma**2 / (1 + sigma**2),
        sigma_next**2 / (1 + sigma_next**2),
    )
    sigma_eta_sq = eta**2 * one_minus_abar_next / one_minus_abar * (1 - abar / abar_next)
    return math.sqrt(max(sigma_eta_sq, 0.0) / abar_next)
