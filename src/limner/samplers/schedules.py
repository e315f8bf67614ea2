"""Noise-level (sigma) schedules for the samplers.

A schedule is a decreasing tensor ``sigmas`` of length ``steps + 1``: ``sigmas[0] = sigma_max``,
``sigmas[steps - 1] = sigma_min`` and ``sigmas[steps] = 0`` exactly, so the last step of every
sampler lands on the clean image. Values are computed in float64 and then cast.

- ``karras``: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
  Models" (EDM, arXiv 2206.00364), eq. 5: uniform steps in ``sigma ** (1 / rho)``.
- ``exponential``: uniform steps in ``log sigma`` (the ``rho -> inf`` limit of ``karras``; the
  step size in lambda = -log sigma that DPM-Solver, Lu et al. 2022, is analysed with).
- ``vp``: the variance-preserving SDE discretisation of Song et al. 2021 (arXiv 2011.13456) as
  written in EDM Table 1: ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` with t uniform
  in ``[eps_s, 1]``; ``beta_d`` and ``eps_s`` are solved so the ends hit ``sigma_max`` and
  ``sigma_min`` (EDM's fixed ``beta_d = 19.9`` would give ``sigma_max`` of about 152).
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import Tensor

from limner.errors import UsageError


class ScheduleError(UsageError, ValueError):
    """A bad schedule name or range (a ``ValueError`` the CLI reports without a traceback)."""


class ScheduleName(str, Enum):
    """The sigma schedules :func:`get_sigmas` knows."""

    karras = "karras"
    exponential = "exponential"
    vp = "vp"


# The VP SDE's beta_min (Song et al. 2021, EDM Table 1), capped for tiny sigma_max.
VP_BETA_MIN = 0.1


def karras_sigmas(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """EDM schedule (Karras et al. 2022, eq. 5), float32 ``[steps + 1]`` ending in 0."""
    return get_sigmas(ScheduleName.karras, steps, sigma_min, sigma_max, rho=rho, device=device)


def get_sigmas(
    name: str | ScheduleName,
    steps: int,
    sigma_min: float,
    sigma_max: float,
    *,
    rho: float = 7.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The named schedule as a strictly decreasing ``[steps + 1]`` tensor ending in exactly 0.

    Args:
        name: a :class:`ScheduleName` (or its value).
        steps: number of sampler steps N (>= 1).
        sigma_min, sigma_max: the last non-zero and the first noise level, 0 < min < max.
        rho: ``karras`` only; EDM's default 7 spends more steps at low noise.
        device, dtype: where the result lives (computed in float64 on the CPU first).
    """
    schedule = _schedule_name(name)
    _check_range(steps, sigma_min, sigma_max)
    # notation: ramp = i / (N - 1) for i = 0..N-1 (a single step is just [sigma_max])
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    if schedule is ScheduleName.karras:
        sigmas = _karras(ramp, sigma_min, sigma_max, rho)
    elif schedule is ScheduleName.exponential:
        sigmas = torch.exp(math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max)))
    else:
        sigmas = _vp(ramp, sigma_min, sigma_max)
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(device=device, dtype=dtype)


def _karras(ramp: Tensor, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    # EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    if rho <= 0:
        raise ScheduleError(f"rho must be positive, got {rho}")
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def _vp(ramp: Tensor, sigma_min: float, sigma_max: float) -> Tensor:
    # sigma(t)^2 = exp(beta_d t^2 / 2 + beta_min t) - 1; solve sigma(1) = sigma_max for beta_d and
    # sigma(eps_s) = sigma_min for eps_s (the quadratic's positive root, cancellation-free).
    L_max, L_min = math.log1p(sigma_max**2), math.log1p(sigma_min**2)
    beta_min = min(VP_BETA_MIN, L_max / 2)
    beta_d = 2 * (L_max - beta_min)
    eps_s = 2 * L_min / (beta_min + math.sqrt(beta_min**2 + 2 * beta_d * L_min))
    t = 1 + ramp * (eps_s - 1)
    return torch.sqrt(torch.expm1(0.5 * beta_d * t**2 + beta_min * t))


def _schedule_name(name: str | ScheduleName) -> ScheduleName:
    try:
        return ScheduleName(name)
    except ValueError:
        valid = ", ".join(s.value for s in ScheduleName)
        raise ScheduleError(
            f"unknown sigma schedule {str(name)!r}; valid schedules: {valid}"
        ) from None


def _check_range(steps: int, sigma_min: float, sigma_max: float) -> None:
    if steps < 1:
        raise ScheduleError(f"steps must be at least 1, got {steps}")
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ScheduleError(
            f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
