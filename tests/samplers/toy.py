"""Toy data distributions with exact denoisers, for checking samplers against known answers.

For data x0 ~ p and x = x0 + sigma n, the ideal denoiser is D(x; sigma) = E[x0 | x] (EDM eq. 2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MU, S = 0.3, 0.5  # Gaussian data: every pixel ~ N(MU, S^2)
MIX_WEIGHTS = (0.3, 0.7)  # two-component mixture: weights, means, stds
MIX_MEANS = (-1.0, 1.0)
MIX_STDS = (0.1, 0.1)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def _per_row(sigma: Tensor, x: Tensor) -> Tensor:
    # sigma [B] -> [B, 1, 1, 1] in x's dtype
    return sigma.to(x.dtype).view(-1, *[1] * (x.dim() - 1))


def gaussian_denoiser(
    x: Tensor, sigma: Tensor, cond: object = None, mu: float = MU, s: float = S
) -> Tensor:
    """E[x0 | x] for x0 ~ N(mu, s^2): mu + s^2 / (s^2 + sigma^2) (x - mu)."""
    sig = _per_row(sigma, x)
    return mu + s**2 / (s**2 + sig**2) * (x - mu)


def gaussian_ode_solution(x_T: Tensor, sigma_max: float = SIGMA_MAX) -> Tensor:
    """Exact PF-ODE map from sigma_max to 0 (x - mu scales by s / sqrt(s^2 + sigma^2))."""
    return MU + S / math.sqrt(S**2 + sigma_max**2) * (x_T - MU)


def mixture_denoiser(x: Tensor, sigma: Tensor, cond: object = None) -> Tensor:
    """E[x0 | x] for a 1-D Gaussian mixture, per pixel: posterior-weighted component means."""
    w, m, sd = (torch.tensor(v, dtype=x.dtype) for v in (MIX_WEIGHTS, MIX_MEANS, MIX_STDS))
    sig, xk = _per_row(sigma, x)[..., None], x[..., None]  # [B, C, H, W, 1] against K components
    var = sd**2 + sig**2
    log_post = torch.log(w) - 0.5 * (xk - m) ** 2 / var - 0.5 * torch.log(var)
    post = torch.softmax(log_post, dim=-1)
    return (post * (m + sd**2 / var * (xk - m))).sum(-1)


def noise(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Unit Gaussian noise from a fixed seed."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
