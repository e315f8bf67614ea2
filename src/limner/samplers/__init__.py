"""limner.samplers: diffusion samplers behind one contract.

``sample_<name>(denoiser, x, sigmas, cond, *, generator=None, callback=None, **options)`` with
``denoiser(x, sigma, cond) -> x0``, ``sigmas`` from :mod:`limner.samplers.schedules`, and
classifier-free guidance applied around the denoiser by :class:`CFGDenoiser`. Importing this
package registers every sampler in :data:`SAMPLERS`.

Example::

    import torch
    from limner.samplers import initial_noise, sample

    noise = initial_noise((2, 3, 8, 8), seeds=[1, 2])
    x = sample(lambda x, sigma, cond: torch.zeros_like(x), noise, None,
               sampler="dpmpp_2m", steps=10, sigma_min=0.002, sigma_max=80.0)
"""

from limner.torchcheck import require_torch

require_torch()  # before any torch-using module below
from limner.samplers.base import (
    SAMPLER_SPECS,
    SAMPLERS,
    Denoiser,
    Generators,
    SamplerError,
    SamplerFn,
    SamplerName,
    SamplerSpec,
    StepCallback,
    get_sampler,
    initial_noise,
    randn_like_rows,
    sample,
)
from limner.samplers.ddim import sample_ddim
from limner.samplers.dpmpp import sample_dpmpp_2m, sample_dpmpp_2m_sde
from limner.samplers.euler import sample_euler
from limner.samplers.euler_ancestral import sample_euler_ancestral
from limner.samplers.guidance import CFGDenoiser
from limner.samplers.heun import sample_heun
from limner.samplers.schedules import ScheduleError, ScheduleName, get_sigmas, karras_sigmas

__all__ = [
    "SAMPLERS",
    "SAMPLER_SPECS",
    "CFGDenoiser",
    "Denoiser",
    "Generators",
    "SamplerError",
    "SamplerFn",
    "SamplerName",
    "SamplerSpec",
    "ScheduleError",
    "ScheduleName",
    "StepCallback",
    "get_sampler",
    "get_sigmas",
    "initial_noise",
    "karras_sigmas",
    "randn_like_rows",
    "sample",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
]
