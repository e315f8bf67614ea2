"""The public entry points: registry lookup, ``sample``, seeded noise and per-row generators."""

from __future__ import annotations

import pytest
import torch

from limner.errors import LimnerError
from limner.samplers import (
    SAMPLERS,
    SamplerName,
    get_sampler,
    get_sigmas,
    initial_noise,
    randn_like_rows,
    sample,
    sample_dpmpp_2m,
)

from .toy import SIGMA_MAX, SIGMA_MIN, gaussian_denoiser


def test_get_sampler_by_name_and_enum():
    assert get_sampler("dpmpp_2m") is sample_dpmpp_2m
    assert get_sampler(SamplerName.dpmpp_2m) is sample_dpmpp_2m


def test_unknown_sampler_is_a_value_error_listing_the_valid_ones():
    with pytest.raises(ValueError, match="'euler_a'") as info:
        get_sampler("euler_a")
    assert all(name in str(info.value) for name in SAMPLERS)
    assert isinstance(info.value, LimnerError)  # the CLI prints it without a traceback


def test_sample_scales_unit_noise_by_sigma_max_and_runs_the_sampler():
    noise = initial_noise((2, 3, 8, 8), seeds=[1, 2])
    out = sample(
        gaussian_denoiser,
        noise,
        None,
        sampler="dpmpp_2m",
        steps=8,
        sigma_min=SIGMA_MIN,
        sigma_max=SIGMA_MAX,
        schedule="exponential",
    )
    sigmas = get_sigmas("exponential", 8, SIGMA_MIN, SIGMA_MAX)
    assert torch.equal(out, sample_dpmpp_2m(gaussian_denoiser, noise * SIGMA_MAX, sigmas, None))


def test_sample_passes_options_and_rejects_unknown_ones():
    noise = initial_noise((1, 1, 4, 4), seeds=[0])
    kwargs = dict(steps=4, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    a = sample(
        gaussian_denoiser,
        noise,
        None,
        sampler="ddim",
        eta=1.0,
        generator=torch.Generator(),
        **kwargs,
    )
    b = sample(gaussian_denoiser, noise, None, sampler="ddim", eta=0.0, **kwargs)
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="eta"):
        sample(gaussian_denoiser, noise, None, sampler="euler", eta=1.0, **kwargs)
    with pytest.raises(ValueError, match="karras"):
        sample(gaussian_denoiser, noise, None, sampler="euler", schedule="cosine", **kwargs)


def test_initial_noise_rows_come_from_their_own_seed():
    noise = initial_noise((3, 2, 4, 4), seeds=[5, 6, 5], dtype=torch.float64)
    expected = torch.randn((2, 4, 4), generator=torch.Generator().manual_seed(6))
    assert noise.dtype == torch.float64
    assert torch.equal(noise[1], expected.double())
    assert torch.equal(noise[0], noise[2])
    with pytest.raises(ValueError, match="seeds"):
        initial_noise((2, 2, 4, 4), seeds=[1])


def test_randn_like_rows_with_one_generator_per_row():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    rows = randn_like_rows(x, [torch.Generator().manual_seed(s) for s in (1, 2)])
    assert rows.dtype == torch.float64
    assert torch.equal(
        rows[1], torch.randn((3, 4, 4), generator=torch.Generator().manual_seed(2)).double()
    )
    with pytest.raises(ValueError, match="generators"):
        randn_like_rows(x, [torch.Generator()])


def test_randn_like_rows_with_a_single_or_no_generator():
    x = torch.zeros(2, 3)
    one = randn_like_rows(x, torch.Generator().manual_seed(3))
    assert torch.equal(one, torch.randn((2, 3), generator=torch.Generator().manual_seed(3)))
    torch.manual_seed(4)
    first = randn_like_rows(x, None)
    torch.manual_seed(4)
    assert torch.equal(first, randn_like_rows(x, None))
