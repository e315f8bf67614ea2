"""DPM-Solver++(2M) and its SDE variant.

Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
(arXiv 2211.01095): Algorithm 2 (multistep second order in the data prediction D) and its
stochastic counterpart SDE-DPM-Solver++(2M) from the paper's appendix on SDE solvers, both
written for the VE form alpha_t = 1 used throughout ``limner.samplers``.

Notation: lambda = -log sigma (log signal-to-noise ratio); h = lambda_{i+1} - lambda_i =
log(sigma_i / sigma_{i+1}); r = h_{i-1} / h_i; D_hat = the multistep combination of the last two
denoiser outputs. ``eta`` scales the SDE noise (0 = the ODE solver, 1 = the reverse SDE).
With alpha = 1 one step is

    x_{i+1} = (sigma_{i+1} / sigma_i) e^{-eta h} x_i + (1 - e^{-(1 + eta) h}) D_hat
              + sigma_{i+1} sqrt(1 - e^{-2 eta h}) z,
    D_hat   = D_i + (D_i - D_{i-1}) / (2 r)      (D_hat = D_i on the first step).

The step to sigma = 0 (lambda = inf) reduces to x = D_i, as in the paper's first-order limit.
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


@register_sampler(SamplerName.dpmpp_2m, SamplerSpec(order=2, stochastic=False))
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Any,
    *,
    generator: Generators = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2); deterministic, one denoiser call per step.

    Args:
        x: [B, C, H, W] noise already scaled by ``sigmas[0]``.
        sigmas: [N + 1] decreasing noise levels, normally ending in 0.
        generator: unused (accepted for the common contract).
    """
    return _dpmpp_2m(denoiser, x, sigmas, cond, eta=0.0, generator=generator, callback=callback)


@register_sampler(SamplerName.dpmpp_2m_sde, SamplerSpec(order=2, stochastic=True))
def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Any,
    *,
    generator: Generators = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, Appendix); fresh noise each step.

    Args:
        x: [B, C, H, W] noise already scaled by ``sigmas[0]``.
        sigmas: [N + 1] decreasing noise levels, normally ending in 0.
        generator: per-step noise (see ``randn_like_rows``).
        eta: noise scale, 0 = DPM-Solver++(2M), 1 = the reverse-time SDE.
    """
    return _dpmpp_2m(denoiser, x, sigmas, cond, eta=eta, generator=generator, callback=callback)


def _dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Any,
    *,
    eta: float,
    generator: Generators,
    callback: StepCallback | None,
) -> Tensor:
    sigma = sigmas.tolist()
    old_denoised, h_last = None, 0.0
    for i in range(len(sigma) - 1):
        denoised = denoise(denoiser, x, sigma[i], cond)
        report(callback, i, sigma, x, denoised)
        if sigma[i + 1] == 0:
            x = denoised
            continue
        h = math.log(sigma[i] / sigma[i + 1])
        D_hat = denoised
        if old_denoised is not None:
            r = h_last / h
            D_hat = denoised + (denoised - old_denoised) / (2 * r)
        x = (sigma[i + 1] / sigma[i]) * math.exp(-eta * h) * x - math.expm1(-(1 + eta) * h) * D_hat
        if eta > 0:
            x = x + sigma[i + 1] * math.sqrt(-math.expm1(-2 * eta * h)) * randn_like_rows(
                x, generator
            )
        old_denoised, h_last = denoised, h
    return x
