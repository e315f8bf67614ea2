"""Sigma schedules: shape, ends, monotonicity and the closed forms they follow."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from limner.samplers import ScheduleName, get_sigmas, karras_sigmas

SCHEDULES = [s.value for s in ScheduleName]


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_shape_ends_and_order(name, steps):
    sigmas = get_sigmas(name, steps, 0.002, 80.0)
    assert sigmas.shape == (steps + 1,) and sigmas.dtype == torch.float32
    assert sigmas[-1].item() == 0.0
    assert (sigmas[1:] < sigmas[:-1]).all()
    assert sigmas[0].item() == pytest.approx(80.0, rel=1e-6)
    if steps > 1:
        assert sigmas[-2].item() == pytest.approx(0.002, rel=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(SCHEDULES),
    steps=st.integers(1, 200),
    sigma_min=st.floats(1e-4, 1.0),
    ratio=st.floats(1.5, 1e5),
)
def test_schedule_properties_hold_for_any_range(name, steps, sigma_min, ratio):
    sigma_max = sigma_min * ratio
    sigmas = get_sigmas(name, steps, sigma_min, sigma_max, dtype=torch.float64)
    assert sigmas.shape == (steps + 1,) and sigmas[-1].item() == 0.0
    assert (sigmas[1:] < sigmas[:-1]).all()
    assert sigmas[0].item() == pytest.approx(sigma_max, rel=1e-9)
    assert sigmas[-2].item() == pytest.approx(sigma_min if steps > 1 else sigma_max, rel=1e-9)


@pytest.mark.parametrize("rho", [1.0, 7.0])
def test_karras_matches_the_closed_form(rho):
    # EDM eq. 5, written out independently with Python floats
    N, lo, hi = 10, 0.002, 80.0
    expected = [
        (hi ** (1 / rho) + i / (N - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        for i in range(N)
    ]
    sigmas = karras_sigmas(N, lo, hi, rho=rho)
    torch.testing.assert_close(sigmas, torch.tensor(expected + [0.0]))
    assert torch.equal(sigmas, get_sigmas("karras", N, lo, hi, rho=rho))


def test_exponential_is_uniform_in_log_sigma():
    log_sigmas = get_sigmas("exponential", 12, 0.01, 50.0, dtype=torch.float64)[:-1].log()
    steps = log_sigmas[:-1] - log_sigmas[1:]
    torch.testing.assert_close(steps, torch.full_like(steps, math.log(5000) / 11))


def test_vp_reproduces_edm_table_1_with_its_default_constants():
    # EDM's VP: beta_d = 19.9, beta_min = 0.1, t uniform on [1e-3, 1]; pick the range it implies
    def sigma(t):
        return math.sqrt(math.expm1(0.5 * 19.9 * t**2 + 0.1 * t))

    N = 18
    expected = [sigma(1 + i / (N - 1) * (1e-3 - 1)) for i in range(N)] + [0.0]
    sigmas = get_sigmas("vp", N, sigma(1e-3), sigma(1.0), dtype=torch.float64)
    torch.testing.assert_close(sigmas, torch.tensor(expected, dtype=torch.float64))


def test_schedule_device_and_dtype():
    sigmas = get_sigmas(ScheduleName.exponential, 4, 0.1, 10.0, device="cpu", dtype=torch.float64)
    assert sigmas.dtype == torch.float64 and sigmas.device.type == "cpu"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("cosine", 10, 0.1, 10.0), "karras, exponential, vp"),
        (("karras", 0, 0.1, 10.0), "steps"),
        (("karras", 10, 10.0, 0.1), "sigma_min"),
        (("karras", 10, 0.0, 10.0), "sigma_min"),
    ],
)
def test_bad_schedule_arguments_are_value_errors(args, match):
    with pytest.raises(ValueError, match=match):
        get_sigmas(*args)
