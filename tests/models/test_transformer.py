"""The token families: transformer masks, the KV cache, MaskGIT's schedule and inpainting,
top-k/top-p, guidance, per-seed determinism, losses that learn, and the --vq checks.

Train/resume/sample/--from-image/interpolation through the CLI are the family contract test's.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from limner.conditioning import CondKind
from limner.conditioning.base import Conditioning
from limner.data.batch import Batch
from limner.errors import UsageError
from limner.generation.request import BatchRequest
from limner.models.base import DataInfo
from limner.models.transformer.config import TransformerConfig
from limner.models.transformer.family import AutoregressiveFamily, MaskGITFamily
from limner.models.transformer.model import KVCache, TokenNetConfig, TokenTransformer, gelu_tanh_
from limner.samplers.autoregressive import filter_logits, sample_autoregressive
from limner.samplers.maskgit import cosine_mask_ratio, sample_maskgit

K, GRID = 16, 4  # codes, token grid side


def net(causal: bool, cond_dim: int = 0, seed: int = 0) -> TokenTransformer:
    torch.manual_seed(seed)
    model = TokenTransformer(TokenNetConfig(num_codes=K, seq_len=GRID * GRID, dim=32, depth=2, heads=4,
                                            cond_dim=cond_dim, causal=causal)).eval()
    with torch.no_grad():  # sharpen the random logits so sampling is not a coin toss
        model.head.weight.mul_(20)
    return model


def family(cls, cond: str = "class"):
    """A tiny family built from config (no VQ run needed: the tokenizer is a fresh tiny VQ-VAE)."""
    from limner.conditioning import resolve_encoder_config
    from limner.models.vae.family import VAEFamily

    vq = VAEFamily.create("vq-tiny", DataInfo(resolution=16, channels=3), "none").config

    enc = resolve_encoder_config(cond, DataInfo(resolution=16, channels=3, num_classes=3, captions=["red circle", "blue heart"]),
                                 dim=16, layers=1)
    grid = vq.latent_shape[1]
    netcfg = TokenNetConfig(num_codes=vq.codebook_size, seq_len=grid * grid, dim=32, depth=2, heads=2,
                            cond_dim=0 if enc.kind == CondKind.none else enc.dim, causal=cls.kind == "autoregressive")
    cfg = TransformerConfig(preset="tiny", kind=cls.kind, resolution=16, channels=3, grid=grid, net=netcfg.to_dict(),
                            encoder=enc.to_dict(), vq=vq.to_dict(), **cls.sampling_defaults)
    torch.manual_seed(0)
    return cls(cfg)


# ---------------------------------------------------------------------------------------------
# The transformer and its KV cache
# ---------------------------------------------------------------------------------------------


def test_causal_model_never_looks_ahead_and_bidirectional_does():
    tokens = torch.randint(0, K, (2, GRID * GRID))
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % K
    for causal in (True, False):
        m = net(causal)
        a, b = m(tokens, Conditioning.empty(2)), m(changed, Conditioning.empty(2))
        same_before = torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
        assert same_before == causal
        assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_kv_cache_gives_the_logits_of_a_full_forward():
    m = net(True, cond_dim=8)
    cond = Conditioning(vector=torch.randn(2, 8), tokens=torch.randn(2, 3, 8),
                        mask=torch.tensor([[True, True, False], [True, False, False]]))
    inputs = torch.cat([torch.full((2, 1), K), torch.randint(0, K, (2, GRID * GRID - 1))], dim=1)
    full = m(inputs, cond)
    cache = KVCache()
    steps = [m(inputs[:, j : j + 1], cond, cache=cache, start=j) for j in range(inputs.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_wanted_positions_get_the_logits_of_a_full_forward():
    m = net(False, cond_dim=8)
    cond = Conditioning(vector=torch.randn(3, 8), tokens=torch.randn(3, 2, 8),
                        mask=torch.tensor([[True, True], [True, False], [False, False]]))
    tokens = torch.randint(0, K + 1, (3, GRID * GRID), generator=torch.Generator().manual_seed(0))
    wanted = torch.rand(3, GRID * GRID, generator=torch.Generator().manual_seed(1)) < 0.4
    wanted[2] = False  # a row with nothing wanted
    with torch.no_grad():
        full, some = m(tokens, cond), m(tokens, cond, wanted=wanted)
    torch.testing.assert_close(some[wanted], full[wanted], atol=1e-5, rtol=1e-5)
    assert (some[~wanted] == 0).all() and some.shape == full.shape


def test_inference_gelu_is_pytorchs_tanh_gelu():
    x = torch.cat([torch.linspace(-12, 12, 2001), torch.tensor([0.0, -0.0, 1e-30, -1e4, 1e4, -1e30, 1e30])])
    torch.testing.assert_close(gelu_tanh_(x.clone()), torch.nn.functional.gelu(x, approximate="tanh"),
                               atol=1e-6, rtol=1e-5)
    m = net(False, cond_dim=8)  # the eval-mode, gradient-free path uses it
    tokens, cond = torch.randint(0, K + 1, (2, GRID * GRID)), Conditioning(vector=torch.randn(2, 8))
    with torch.no_grad():
        fast = m(tokens, cond)
    torch.testing.assert_close(fast, m(tokens, cond).detach(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("cond", ["class", "none"])
def test_maskgit_sampling_shortcuts_give_the_plain_samplers_logits(cond, monkeypatch):
    """Logits of the still-masked positions only, and a first step run once per distinct
    condition (here: two classes and the unconditional half, 3 of 8 rows): at every position the
    sampler reads, the logits of the plain path, so the same tokens."""
    import limner.models.transformer.family as token_family

    fam = family(MaskGITFamily, cond=cond)
    for p in fam.model.net.head.parameters():
        p.data.normal_(0, 2.0, generator=torch.Generator().manual_seed(2))
    req = BatchRequest(seeds=[3, 4, 5, 6], labels=[1, 1, 2, 1] if cond == "class" else None, cfg=3.0, steps=4)
    calls: list[tuple[Tensor, Tensor]] = []  # (tokens, logits) of each sampler step
    rows: list[int] = []
    sampler, forward = token_family.sample_maskgit, fam.model.forward

    def recording_sampler(logits_fn, noise, **kw):
        def recorded(tokens):
            calls.append((tokens, logits_fn(tokens)))
            return calls[-1][1]
        return sampler(recorded, noise, **kw)

    def counting_forward(tokens, *a, **k):
        rows.append(len(tokens))
        return forward(tokens, *a, **k)

    monkeypatch.setattr(token_family, "sample_maskgit", recording_sampler)
    fam.model.forward = counting_forward
    fast = fam.sample_tokens(req)
    assert rows == ([3, 8, 8, 8] if cond == "class" else [1, 4, 4, 4])  # guidance doubles the rows
    fast_calls, calls[:] = list(calls), []
    fam.sampling_shortcuts = False
    plain = fam.sample_tokens(req)
    assert len(calls) == len(fast_calls) == 4
    for (tokens, a), (_, b) in zip(fast_calls, calls):
        read = tokens == fam.model.net.special
        torch.testing.assert_close(a[read], b[read], atol=1e-5, rtol=1e-5)
    assert torch.equal(fast, plain) and (fast < fam.num_codes).all()


def test_cached_and_uncached_sampling_agree():
    fam = family(AutoregressiveFamily)
    req = BatchRequest(seeds=[3, 4], labels=[0, 2], cfg=3.0, options={"top_k": 50, "temperature": 1.0})
    fam.use_cache = True
    cached = fam.sample_tokens(req)
    fam.use_cache = False
    plain = fam.sample_tokens(req)
    assert torch.equal(cached, plain)
    assert not torch.equal(cached[0], cached[1])


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def test_maskgit_unmasks_on_the_cosine_schedule():
    m = net(False)
    N, T = GRID * GRID, 6
    seen = []
    noise = torch.randn(2, N, K + 1, generator=torch.Generator().manual_seed(1))
    out = sample_maskgit(lambda t: m(t, Conditioning.empty(len(t))), noise, mask_id=K, steps=T, temperature=4.5,
                         callback=lambda info: seen.append((info["tokens"] == K).sum(dim=1).tolist()))
    expected = [min(math.floor(N * cosine_mask_ratio((t + 1) / T)), N - t - 1) for t in range(T)]
    assert [row[0] for row in seen] == expected and expected[-1] == 0
    assert out.min() >= 0 and out.max() < K


def test_maskgit_inpainting_keeps_the_known_tokens():
    m = net(False)
    N = GRID * GRID
    known = torch.randint(0, K, (2, N))
    keep = torch.rand(2, N, generator=torch.Generator().manual_seed(0)) < 0.5
    noise = torch.randn(2, N, K + 1)
    out = sample_maskgit(lambda t: m(t, Conditioning.empty(len(t))), noise, mask_id=K, steps=4, temperature=1.0,
                         known=known, known_mask=keep)
    assert torch.equal(out[keep], known[keep]) and (out != K).all()


def test_top_k_and_top_p_keep_the_right_codes():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.85)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits)).all()


def test_top_k_one_and_temperature_zero_are_greedy():
    m = net(True)
    noise = torch.randn(1, GRID * GRID, K)
    step = lambda t, s: m(t, Conditioning.empty(len(t)))  # noqa: E731
    greedy = sample_autoregressive(step, noise, start_id=K, temperature=0.0, use_cache=False)
    top1 = sample_autoregressive(step, torch.randn(1, GRID * GRID, K), start_id=K, top_k=1, use_cache=False)
    assert torch.equal(greedy, top1)


# ---------------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MaskGITFamily, AutoregressiveFamily])
def test_each_image_depends_on_its_seed_only_and_guidance_matters(cls):
    fam = family(cls)
    for p in fam.model.net.head.parameters():  # a model with opinions, so guidance shows
        p.data.normal_(0, 2.0, generator=torch.Generator().manual_seed(2))
    both = fam.generate(BatchRequest(seeds=[5, 9], labels=[1, 1])).images
    alone = fam.generate(BatchRequest(seeds=[9], labels=[1])).images
    assert torch.equal(both[1], alone[0]) and both.dtype == torch.uint8 and both.shape == (2, 3, 16, 16)
    plain = fam.generate(BatchRequest(seeds=[9], labels=[1], cfg=1.0)).images
    strong = fam.generate(BatchRequest(seeds=[9], labels=[1], cfg=6.0)).images
    assert not torch.equal(plain, strong)


def test_negative_prompt_takes_the_place_of_the_unconditional_logits():
    fam = family(MaskGITFamily, cond="text")
    seen = []
    original = fam.model.forward

    def spy(tokens, cond, *a, **k):
        seen.append(cond)
        return original(tokens, cond, *a, **k)

    fam.model.forward = spy
    fam.generate(BatchRequest(seeds=[1], prompts=["red"], negative="blue", cfg=3.0, steps=2))
    neg = fam.encoder(fam.encoder.prepare(captions=["blue"], batch_size=1))
    torch.testing.assert_close(seen[0].vector[1:], neg.vector)


@pytest.mark.parametrize("cls", [MaskGITFamily, AutoregressiveFamily])
def test_loss_falls_when_fitting_a_fixed_batch(cls):
    fam = family(cls)
    tokens = torch.randint(0, fam.num_codes, (4, fam.num_tokens), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(fam.model.parameters(), lr=3e-3)
    inputs = fam.encoder.prepare(labels=[0, 1, 2, 0], batch_size=4)

    def held_out() -> float:  # the same masks / the same rows each time
        with torch.no_grad():
            return float(fam.loss(fam.model, tokens, inputs, None, torch.Generator().manual_seed(123)))

    before = held_out()
    for i in range(30):
        loss = fam.loss(fam.model, tokens, inputs, None, torch.Generator().manual_seed(i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.isfinite(before) and held_out() < 0.8 * before


def test_tokens_are_encoded_once_per_image():
    fam = family(MaskGITFamily, cond="none")
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    batch = Batch(images=images, indices=torch.tensor([0, 1, 2]))
    a = fam.encode_batch(batch)
    calls = []
    fam.tokenizer.encode_tokens = lambda x: calls.append(x) or torch.zeros(1, GRID, GRID, dtype=torch.long)
    b = fam.encode_batch(batch)
    assert torch.equal(a, b) and not calls and fam.cache_size == 3
    flipped = Batch(images=images.flip(-1), indices=torch.tensor([0, 1, 2]))
    fam.encode_batch(flipped)  # a flip is another image
    assert len(calls) == 3 and fam.cache_size == 6


def test_inpaint_regenerates_only_the_masked_patches():
    fam = family(MaskGITFamily, cond="none")
    images = (torch.rand(1, 3, 16, 16) * 255).to(torch.uint8)
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[..., :8, :] = True  # top half
    x = images.float() / 127.5 - 1
    known = fam.tokenizer.encode_tokens(x).reshape(1, -1)
    seen = {}
    original = fam.sample_tokens

    def spy(request, **kw):
        seen.update(kw)
        return original(request, **kw)

    fam.sample_tokens = spy
    out = fam.inpaint(images, mask, BatchRequest(seeds=[3]))
    keep = seen["known_mask"]
    assert keep.sum() == keep.numel() // 2 and out.extra["regenerated_tokens"] == keep.numel() // 2
    tokens = original(BatchRequest(seeds=[3]), known=known, known_mask=keep)
    assert torch.equal(tokens[keep], known[keep])


def test_vq_run_checks_name_the_option(tmp_path):
    with pytest.raises(UsageError) as exc:
        MaskGITFamily.create("tiny", DataInfo(resolution=16, channels=3), "none")
    assert exc.value.field == "vq" and "--preset vq-small" in str(exc.value)
    with pytest.raises(UsageError) as exc:
        AutoregressiveFamily.create("tiny", DataInfo(resolution=16, channels=3), "none", vq=tmp_path)
    assert str(exc.value).startswith("--vq:")


def test_img2img_keeps_a_seeded_share_of_the_init_tokens():
    fam = family(MaskGITFamily, cond="none")
    init = (torch.rand(2, 3, 16, 16) * 255).to(torch.uint8)
    req = BatchRequest(seeds=[3, 4])
    req.init, req.strength = init, 0.25  # as limner.generation.pipeline.EditInputs sets them
    keep = fam._kept_tokens(req, None, 0.25)
    assert (keep.sum(dim=1) == fam.num_tokens - math.ceil(0.25 * fam.num_tokens)).all()
    assert not torch.equal(keep[0], keep[1])  # each seed picks its own tokens
    out = fam.generate(req)
    assert out.extra["regenerated_tokens"] == int((~keep).sum()) and out.images.shape == (2, 3, 16, 16)
