"""Heun's second-order method with optional stochastic "churn".

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM,
arXiv 2206.00364): Algorithm 1 (deterministic), and Algorithm 2 when ``S_churn > 0``, which
first raises the noise level from t_i to t_hat = t_i (1 + gamma) by adding fresh noise.

Notation: t = sigma (EDM's sigma(t) = t); d, d_prime = slopes dx/dt at t_hat and t_{i+1}.
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


@register_sampler(SamplerName.heun, SamplerSpec(order=2, stochastic=False, evals_per_step=2))
def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Any,
    *,
    generator: Generators = None,
    callback: StepCallback | None = None,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,
    S_noise: float = 1.0,
) -> Tensor:
    """EDM Heun sampler (Karras et al. 2022, Algorithms 1 and 2); 2N - 1 denoiser calls.

    Args:
        x: [B, C, H, W] noise already scaled by ``sigmas[0]``.
        sigmas: [N + 1] decreasing noise levels, normally ending in 0.
        generator: churn noise only (unused when ``S_churn == 0``).
        S_churn: total stochasticity; gamma_i = min(S_churn / N, sqrt(2) - 1) (EDM eq. 7).
        S_tmin, S_tmax: churn only while S_tmin <= t_i <= S_tmax.
        S_noise: std of the churn noise, slightly above 1 offsets detail loss (EDM Sec. 4).
    """
    t = sigmas.tolist()
    N = len(t) - 1
    gamma_max = min(S_churn / N, math.sqrt(2) - 1)
    for i in range(N):
        # Alg. 2 lines 4-6: t_hat = t_i + gamma t_i; x_hat = x_i + sqrt(t_hat^2 - t_i^2) eps
        gamma = gamma_max if S_tmin <= t[i] <= S_tmax else 0.0
        t_hat = t[i] * (1 + gamma)
        if gamma > 0:
            eps = S_noise * randn_like_rows(x, generator)
            x = x + math.sqrt(t_hat**2 - t[i] ** 2) * eps
        # lines 7-8: Euler step from t_hat to t_{i+1}
        denoised = denoise(denoiser, x, t_hat, cond)
        report(callback, i, t, x, denoised)
        d = to_d(x, t_hat, denoised)
        x_next = x + (t[i + 1] - t_hat) * d
        # lines 9-11: trapezoidal correction, skipped on the step to t = 0 (slope undefined there)
        if t[i + 1] > 0:
            d_prime = to_d(x_next, t[i + 1], denoise(denoiser, x_next, t[i + 1], cond))
            x_next = x + (t[i + 1] - t_hat) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x
