"""One contract for every registered sampler, checked on toy problems with known answers.

Per-sampler facts come from ``SAMPLER_SPECS`` (order, stochastic, evaluations per step), never
from branches on the sampler's name.
"""

from __future__ import annotations

import math

import pytest
import torch

from limner.samplers import SAMPLER_SPECS, SAMPLERS, SamplerName, get_sigmas

from .toy import (
    MIX_MEANS,
    MIX_WEIGHTS,
    MU,
    SIGMA_MAX,
    SIGMA_MIN,
    S,
    gaussian_denoiser,
    gaussian_ode_solution,
    mixture_denoiser,
    noise,
)

ALL = sorted(SAMPLERS)
DETERMINISTIC = [n for n in ALL if not SAMPLER_SPECS[n].stochastic]
STOCHASTIC = [n for n in ALL if SAMPLER_SPECS[n].stochastic]
# every sampler with its defaults, plus the options that make deterministic ones stochastic
STOCHASTIC_OPTIONS = [("ddim", {"eta": 1.0}), ("heun", {"S_churn": 40.0})]
WITH_OPTIONS = [(n, {}) for n in ALL] + STOCHASTIC_OPTIONS
OPTION_IDS = [
    f"{n}-{','.join(f'{k}={v}' for k, v in o.items()) or 'defaults'}" for n, o in WITH_OPTIONS
]


def run(name, x_T, steps, denoiser=gaussian_denoiser, schedule="karras", seed=0, **options):
    sigmas = get_sigmas(schedule, steps, SIGMA_MIN, SIGMA_MAX, dtype=x_T.dtype)
    gen = torch.Generator().manual_seed(seed)
    return SAMPLERS[name](denoiser, x_T * float(sigmas[0]), sigmas, None, generator=gen, **options)


def test_registry_has_the_required_samplers():
    assert set(SAMPLERS) == {n.value for n in SamplerName} == set(SAMPLER_SPECS)
    assert {"euler", "heun", "dpmpp_2m", "ddim", "euler_ancestral"} <= set(SAMPLERS)


# ----------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("schedule", ["karras", "exponential", "vp"])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_converge_to_the_exact_ode_solution(name, schedule):
    x_T = noise((2, 1, 8, 8), seed=0)
    exact = gaussian_ode_solution(x_T * SIGMA_MAX)
    steps = (10, 20, 40, 80)
    errs = [
        (run(name, x_T, n, schedule=schedule) - exact).pow(2).mean().sqrt().item() for n in steps
    ]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 0.025, errs
    # empirical order from 40 -> 80 steps: Heun / DPM-Solver++ fall like 1/N^2, Euler like 1/N
    order = math.log2(errs[-2] / errs[-1])
    assert order > SAMPLER_SPECS[name].order - 0.3, (order, errs)


@pytest.mark.parametrize(("name", "options"), WITH_OPTIONS, ids=OPTION_IDS)
def test_samples_match_the_gaussian_data_distribution(name, options):
    # 16k i.i.d. pixels (under torch's 32k-element threading grain: no thread oversubscription),
    # standardised so the starting noise has exactly mean 0 and std 1
    x_T = noise((4, 1, 64, 64), seed=1)
    x_T = (x_T - x_T.mean()) / x_T.std()
    std_errs = []
    for steps in (10, 40, 80):
        x0 = run(name, x_T, steps, seed=2, **options)
        assert abs(x0.mean().item() - MU) < 0.01
        std_errs.append(abs(x0.std().item() - S))
    assert std_errs[0] > std_errs[1] > std_errs[2], std_errs
    assert std_errs[-1] < 0.05, std_errs


@pytest.mark.parametrize(("name", "options"), WITH_OPTIONS, ids=OPTION_IDS)
def test_samples_reproduce_both_modes_of_a_mixture(name, options):
    x0 = run(name, noise((8, 1, 32, 32), seed=3), 50, denoiser=mixture_denoiser, seed=4, **options)
    lo, hi = MIX_MEANS
    assert abs((x0 > 0).double().mean().item() - MIX_WEIGHTS[1]) < 0.03
    nearest = torch.where(x0 > 0, hi, lo)
    assert ((x0 - nearest).abs() < 0.3).double().mean().item() > 0.97


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize(("name", "options"), WITH_OPTIONS, ids=OPTION_IDS)
def test_same_seed_gives_identical_output(name, options):
    x_T = noise((2, 3, 8, 8), seed=5, dtype=torch.float32)
    a = run(name, x_T, 6, seed=7, **options)
    b = run(name, x_T, 6, seed=7, **options)
    assert torch.equal(a, b)


@pytest.mark.parametrize(("name", "options"), WITH_OPTIONS, ids=OPTION_IDS)
def test_only_stochastic_samplers_use_the_generator(name, options):
    x_T = noise((2, 3, 8, 8), seed=5, dtype=torch.float32)
    differs = not torch.equal(
        run(name, x_T, 6, seed=7, **options), run(name, x_T, 6, seed=8, **options)
    )
    assert differs == (SAMPLER_SPECS[name].stochastic or (name, options) in STOCHASTIC_OPTIONS)


@pytest.mark.parametrize(("name", "options"), WITH_OPTIONS, ids=OPTION_IDS)
def test_row_result_does_not_depend_on_the_rest_of_the_batch(name, options):
    x_T = noise((3, 3, 8, 8), seed=9, dtype=torch.float32)
    sigmas = get_sigmas("karras", 6, SIGMA_MIN, SIGMA_MAX)

    def rows(idx):
        gens = [torch.Generator().manual_seed(100 + i) for i in idx]
        x = x_T[idx] * float(sigmas[0])
        return SAMPLERS[name](gaussian_denoiser, x, sigmas, None, generator=gens, **options)

    together, alone = rows([0, 2]), rows([2])
    assert torch.equal(together[1], alone[0])
    assert not torch.equal(together[0], together[1])


# ----------------------------------------------------------------------------- callback, dtypes


@pytest.mark.parametrize("name", ALL)
def test_callback_reports_every_step_and_the_result_is_the_last_denoised(name):
    steps, calls = 7, []
    sigmas = get_sigmas("karras", steps, SIGMA_MIN, SIGMA_MAX)
    x = noise((2, 3, 8, 8), seed=1, dtype=torch.float32) * float(sigmas[0])
    out = SAMPLERS[name](gaussian_denoiser, x, sigmas, None, callback=calls.append)
    assert [c["i"] for c in calls] == list(range(steps))
    expected = sigmas.tolist()
    for c in calls:
        assert set(c) >= {"i", "steps", "x", "sigma", "sigma_next", "denoised"}
        assert c["steps"] == steps and isinstance(c["sigma"], float)
        assert (c["sigma"], c["sigma_next"]) == (expected[c["i"]], expected[c["i"] + 1])
        assert c["x"].shape == c["denoised"].shape == x.shape
    # the step to sigma = 0 lands on the denoiser's estimate
    torch.testing.assert_close(out, calls[-1]["denoised"])


@pytest.mark.parametrize("name", ALL)
def test_denoiser_evaluations_per_step(name):
    steps, seen = 5, []

    def counting(x, sigma, cond):
        seen.append(sigma)
        return gaussian_denoiser(x, sigma, cond)

    run(name, noise((1, 1, 4, 4), seed=0), steps, denoiser=counting)
    assert steps <= len(seen) <= SAMPLER_SPECS[name].evals_per_step * steps
    assert all(s.shape == (1,) and s.dtype == torch.float64 for s in seen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ALL)
def test_samplers_work_in_the_dtype_of_x(name, dtype):
    sigma_dtypes = []

    def denoiser(x, sigma, cond):
        sigma_dtypes.append(sigma.dtype)
        return gaussian_denoiser(x, sigma, cond).float()  # a model may answer in float32

    out = run(name, noise((2, 3, 8, 8), seed=0, dtype=dtype), 8, denoiser=denoiser)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert set(sigma_dtypes) == {torch.float32}  # sigma never in half precision


# ----------------------------------------------------------------------------- known identities


def test_ddim_eta0_equals_euler():
    x_T = noise((2, 1, 8, 8), seed=0)
    torch.testing.assert_close(run("ddim", x_T, 12), run("euler", x_T, 12), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_with_eta_equals_euler_ancestral(eta):
    # two derivations of the same step: DDIM eq. 16 in sigma space vs the sigma_down/sigma_up split
    x_T = noise((2, 1, 8, 8), seed=0)
    ddim = run("ddim", x_T, 12, seed=3, eta=eta)
    ancestral = run("euler_ancestral", x_T, 12, seed=3, eta=eta)
    torch.testing.assert_close(ddim, ancestral, rtol=1e-10, atol=1e-10)


def test_dpmpp_2m_sde_with_eta0_is_dpmpp_2m():
    x_T = noise((2, 1, 8, 8), seed=0)
    torch.testing.assert_close(run("dpmpp_2m_sde", x_T, 12, eta=0.0), run("dpmpp_2m", x_T, 12))


def test_heun_calls_the_denoiser_twice_per_step_but_once_on_the_last():
    seen = []
    run("heun", noise((1, 1, 4, 4), seed=0), 5, denoiser=lambda x, s, c: seen.append(s) or x)
    assert len(seen) == 2 * 5 - 1
