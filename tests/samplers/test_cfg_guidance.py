"""Classifier-free guidance around the denoiser: one batched call, the right combination, and
every kind of condition (vector, tokens + mask of different lengths, empty)."""

from __future__ import annotations

import pytest
import torch

from limner.conditioning.base import Conditioning
from limner.samplers import SAMPLERS, CFGDenoiser, get_sigmas

from .toy import SIGMA_MAX, SIGMA_MIN, S, noise

B = 3


def summary(cond: Conditioning) -> torch.Tensor:
    """One number per row that depends on the condition (padding excluded): [B]."""
    if cond.is_empty:
        return torch.zeros(cond.batch_size)
    if cond.vector is not None:
        return cond.vector.sum(-1)
    mask = (
        cond.mask if cond.mask is not None else torch.ones(cond.tokens.shape[:2], dtype=torch.bool)
    )
    return (cond.tokens.sum(-1) * mask).sum(-1) / mask.sum(-1)


class FakeDenoiser:
    """Output depends on x, sigma and the condition; records the batch size of every call."""

    def __init__(self):
        self.calls: list[tuple[int, Conditioning]] = []

    def __call__(self, x, sigma, cond):
        self.calls.append((x.shape[0], cond))
        return 0.5 * x + sigma.view(-1, 1, 1, 1) + summary(cond).view(-1, 1, 1, 1)


def tokens(rows: int, length: int, seed: int) -> Conditioning:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, length, dtype=torch.bool)
    mask[0, -1] = False
    return Conditioning(tokens=torch.randn(rows, length, 4, generator=gen), mask=mask)


def vectors(rows: int, seed: int) -> Conditioning:
    return Conditioning(vector=torch.randn(rows, 5, generator=torch.Generator().manual_seed(seed)))


PAIRS = {
    "vector": (vectors(B, 0), vectors(B, 1)),
    "tokens-shorter-negative": (tokens(B, 7, 0), tokens(B, 3, 1)),
    "tokens-one-negative-row": (tokens(B, 5, 0), tokens(1, 2, 1)),
    "empty": (Conditioning.empty(B), Conditioning.empty(B)),
}


def inputs():
    return noise((B, 2, 4, 4), seed=0, dtype=torch.float32), torch.tensor([3.0, 2.0, 1.0])


@pytest.mark.parametrize("kind", PAIRS)
def test_scale_one_calls_the_denoiser_once_with_the_cond_batch_only(kind):
    cond, uncond = PAIRS[kind]
    inner, (x, sigma) = FakeDenoiser(), inputs()
    out = CFGDenoiser(inner, uncond, 1.0)(x, sigma, cond)
    assert len(inner.calls) == 1 and inner.calls[0][0] == B and inner.calls[0][1] is cond
    torch.testing.assert_close(out, FakeDenoiser()(x, sigma, cond))


@pytest.mark.parametrize("scale", [0.0, 3.0, 7.5])
@pytest.mark.parametrize("kind", PAIRS)
def test_guided_output_is_uncond_plus_scaled_difference_in_one_call(kind, scale):
    cond, uncond = PAIRS[kind]
    inner, (x, sigma) = FakeDenoiser(), inputs()
    out = CFGDenoiser(inner, uncond, scale)(x, sigma, cond)
    D_c = FakeDenoiser()(x, sigma, cond)
    D_u = FakeDenoiser()(x, sigma, uncond.repeat(B) if uncond.batch_size == 1 else uncond)
    torch.testing.assert_close(out, D_u + scale * (D_c - D_u))
    assert [n for n, _ in inner.calls] == [B if scale == 0.0 else 2 * B]


def test_guidance_changes_the_result_when_conditions_differ():
    cond, uncond = PAIRS["tokens-shorter-negative"]
    x, sigma = inputs()
    assert not torch.allclose(
        CFGDenoiser(FakeDenoiser(), uncond, 3.0)(x, sigma, cond), FakeDenoiser()(x, sigma, cond)
    )


def test_uncond_with_the_wrong_number_of_rows_is_rejected():
    x, sigma = inputs()
    with pytest.raises(ValueError, match="rows"):
        CFGDenoiser(FakeDenoiser(), vectors(2, 1), 3.0)(x, sigma, vectors(B, 0))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_follows_the_guided_mean(name):
    # cond data ~ N(mu_c, S^2), uncond data ~ N(mu_u, S^2): the guided denoiser is the exact
    # denoiser of N(mu_u + w (mu_c - mu_u), S^2), so samples move to that mean.
    mu_c, mu_u, w = 0.4, -0.2, 2.0

    def denoiser(x, sigma, cond):
        mu = torch.where(cond.vector[:, 0] > 0, mu_c, mu_u).view(-1, 1, 1, 1).to(x.dtype)
        sig = sigma.view(-1, 1, 1, 1).to(x.dtype)
        return mu + S**2 / (S**2 + sig**2) * (x - mu)

    cond, uncond = Conditioning(vector=torch.ones(4, 1)), Conditioning(vector=-torch.ones(1, 1))
    sigmas = get_sigmas("karras", 40, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    x = noise((4, 1, 32, 32), seed=1) * SIGMA_MAX
    out = SAMPLERS[name](
        CFGDenoiser(denoiser, uncond, w), x, sigmas, cond, generator=torch.Generator()
    )
    assert out.mean().item() == pytest.approx(mu_u + w * (mu_c - mu_u), abs=0.02)
