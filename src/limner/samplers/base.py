"""The sampler contract, the sampler registry and the helpers every sampler shares.

All samplers integrate the variance-exploding form of Karras et al. 2022 ("Elucidating the Design
Space of Diffusion-Based Generative Models", EDM, arXiv 2206.00364, eqs. 1-4, with s(t) = 1 and
sigma(t) = t):

    x = x0 + sigma * n,  n ~ N(0, I);      dx / dsigma = (x - D(x; sigma)) / sigma

where ``D`` is a denoiser returning an estimate of x0. The call contract follows Crowson's
k-diffusion (``sampling.py``, MIT): ``sample_<name>(denoiser, x, sigmas, cond, *, generator,
callback, **options)``. How a network was parameterised (eps, v, x0) is hidden in the adapter that
builds ``D``; samplers never branch on it, and they treat ``cond`` as opaque.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from limner.errors import UsageError
from limner.samplers.schedules import get_sigmas

# D(x [B, C, H, W], sigma [B], cond) -> x0 estimate [B, C, H, W]
Denoiser = Callable[[Tensor, Tensor, Any], Tensor]
# Called once per step with {"i", "steps", "x", "sigma", "sigma_next", "denoised"}.
StepCallback = Callable[[dict[str, Any]], None]
# None = torch's global RNG; one generator for the batch; or one per batch row.
Generators = torch.Generator | Sequence[torch.Generator] | None
# sample_<name>(denoiser, x, sigmas, cond, *, generator=None, callback=None, **options)
#   -> the sample at sigma = 0
SamplerFn = Callable[..., Tensor]


class SamplerError(UsageError, ValueError):
    """A bad sampler name, option or argument (a ``ValueError`` the CLI reports cleanly)."""


class SamplerName(str, Enum):
    """The registered samplers, named as in the papers / k-diffusion."""

    euler = "euler"
    heun = "heun"
    dpmpp_2m = "dpmpp_2m"
    dpmpp_2m_sde = "dpmpp_2m_sde"
    ddim = "ddim"
    euler_ancestral = "euler_ancestral"


@dataclass(frozen=True)
class SamplerSpec:
    """What callers may want to know about a sampler without running it.

    Attributes:
        order: convergence order of the deterministic method (1 = error ~ 1/steps).
        stochastic: draws fresh noise each step with its default options.
        evals_per_step: denoiser calls per step (Heun: 2, except on the last step).
    """

    order: int
    stochastic: bool
    evals_per_step: int = 1


SAMPLERS: dict[str, SamplerFn] = {}
SAMPLER_SPECS: dict[str, SamplerSpec] = {}


def register_sampler(name: SamplerName, spec: SamplerSpec) -> Callable[[SamplerFn], SamplerFn]:
    """Decorator adding a ``sample_<name>`` function to :data:`SAMPLERS`."""

    def add(fn: SamplerFn) -> SamplerFn:
        SAMPLERS[name.value] = fn
        SAMPLER_SPECS[name.value] = spec
        return fn

    return add


def get_sampler(name: str | SamplerName) -> SamplerFn:
    """The sampler function registered as ``name``; raises ``ValueError`` listing valid names."""
    key = name.value if isinstance(name, SamplerName) else str(name)
    if key not in SAMPLERS:
        raise SamplerError(
            f"unknown sampler {key!r}; valid samplers: {', '.join(sorted(SAMPLERS))}"
        )
    return SAMPLERS[key]


# ----------------------------------------------------------------------------- step helpers


def denoise(denoiser: Denoiser, x: Tensor, sigma: float, cond: Any) -> Tensor:
    """Call ``denoiser`` at one noise level for the whole batch; the result is in x's dtype."""
    # sigma [B]: at least float32, since half precision would blur sigma's embedding
    sigma_dtype = torch.promote_types(x.dtype, torch.float32)
    sigma_b = torch.full((x.shape[0],), sigma, dtype=sigma_dtype, device=x.device)
    return denoiser(x, sigma_b, cond).to(x.dtype)


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """The probability-flow ODE's slope dx/dsigma = (x - D(x; sigma)) / sigma (EDM eq. 3)."""
    return (x - denoised) / sigma


def report(
    callback: StepCallback | None, i: int, sigmas: list[float], x: Tensor, denoised: Tensor
) -> None:
    """Tell ``callback`` about step ``i``: x at ``sigmas[i]`` before the update, and its D(x)."""
    if callback is not None:
        callback(
            {
                "i": i,
                "steps": len(sigmas) - 1,
                "x": x,
                "sigma": sigmas[i],
                "sigma_next": sigmas[i + 1],
                "denoised": denoised,
            }
        )


def randn_like_rows(x: Tensor, generator: Generators) -> Tensor:
    """Unit Gaussian noise shaped like ``x`` [B, ...]; with a list, row i comes from generator[i].

    Noise is drawn in float32 on the generator's device, then moved and cast, so a CPU generator
    gives the same numbers whatever ``x``'s device and dtype, and a row's noise does not depend on
    which other rows share its batch.
    """
    if generator is None:
        return torch.randn(x.shape, device=x.device).to(x.dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=generator.device).to(
            x.device, x.dtype
        )
    if len(generator) != x.shape[0]:
        raise SamplerError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    rows = [torch.randn(x.shape[1:], generator=g, device=g.device) for g in generator]
    return torch.stack(rows).to(x.device, x.dtype)


# ----------------------------------------------------------------------------- entry points


def initial_noise(
    shape: Sequence[int],
    seeds: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Unit Gaussian noise [B, C, H, W]; row i is ``torch.randn`` from a CPU generator seeded with
    ``seeds[i]``, so it is identical on every device. ``shape[0]`` must equal ``len(seeds)``."""
    if shape[0] != len(seeds):
        raise SamplerError(f"noise shape {tuple(shape)} does not match {len(seeds)} seeds")
    rows = [
        torch.randn(tuple(shape[1:]), generator=torch.Generator().manual_seed(int(s)))
        for s in seeds
    ]
    return torch.stack(rows).to(device=device, dtype=dtype)


def sample(
    denoiser: Denoiser,
    noise: Tensor,
    cond: Any,
    *,
    sampler: str | SamplerName,
    steps: int,
    sigma_min: float,
    sigma_max: float,
    schedule: str = "karras",
    rho: float = 7.0,
    generator: Generators = None,
    callback: StepCallback | None = None,
    **options: Any,
) -> Tensor:
    """Run a named sampler from unit noise [B, C, H, W] to a sample at sigma = 0.

    Builds the ``schedule`` sigmas (see :func:`~limner.samplers.schedules.get_sigmas`), scales
    ``noise`` by ``sigmas[0]`` and hands ``options`` (e.g. ``eta``, ``S_churn``) to the sampler.
    """
    fn = get_sampler(sampler)
    _check_options(fn, sampler, options)
    sigmas = get_sigmas(schedule, steps, sigma_min, sigma_max, rho=rho, device=noise.device)
    x = noise * float(sigmas[0])
    return fn(denoiser, x, sigmas, cond, generator=generator, callback=callback, **options)


def _check_options(fn: SamplerFn, name: str | SamplerName, options: dict[str, Any]) -> None:
    params = inspect.signature(fn).parameters
    known = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    known = [p for p in known if p not in ("generator", "callback")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        key = name.value if isinstance(name, SamplerName) else name
        takes = ", ".join(known) if known else "none"
        raise SamplerError(
            f"sampler {key!r} has no option {', '.join(unknown)}; its options: {takes}"
        )
