"""U-Net backbone (limner.models.diffusion.unet) and the shared blocks it is built from (limner.nn).

Tiny configurations at 16/32 px; every test runs in well under a second on 2 CPU cores.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from limner.conditioning.base import Conditioning
from limner.models.diffusion.unet import UNET_PRESETS, UNet, UNetConfig, unet_config
from limner.nn import kernels
from limner.nn import GroupNorm2d, Upsample2d, attention, fused_group_norm_act, group_norm_act

COND = 12  # condition width used by the conditioned configs


def _cond(kind: str, batch: int, generator: torch.Generator) -> Conditioning | None:
    if kind == "none":
        return None
    vector = torch.randn(batch, COND, generator=generator)
    if kind == "vector":
        return Conditioning(vector=vector)
    tokens = torch.randn(batch, 5, COND, generator=generator)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[0, 3:] = False  # some padding
    if batch > 2:
        mask[2] = False  # a row with no real token
    return Conditioning(vector=vector, tokens=tokens, mask=mask)


def _config(kind: str, **overrides) -> UNetConfig:
    extra = {"none": {}, "vector": {"cond_dim": COND}, "tokens": {"cond_dim": COND, "cross_attention": True}}
    return unet_config("tiny", **{**extra[kind], **overrides})


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace the zero initialisation so every path contributes to the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


def _inputs(cfg: UNetConfig, batch: int = 4, size: int = 16, kind: str = "none", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, size, size, generator=g)
    noise = torch.randn(batch, generator=g) * 0.5
    return x, noise, _cond(kind, batch, g)


# --- shapes, initialisation, configuration --------------------------------------------------


@pytest.mark.parametrize("kind", ["none", "vector", "tokens"])
@pytest.mark.parametrize("channels,size", [(1, 16), (3, 32)])
def test_output_shape(kind: str, channels: int, size: int) -> None:
    cfg = _config(kind, in_channels=channels, out_channels=channels, resolution=size)
    net = _randomize(UNet(cfg))
    x, noise, cond = _inputs(cfg, size=size, kind=kind)
    out = net(x, noise, cond)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_output_is_zero_at_construction() -> None:
    cfg = _config("tokens")
    x, noise, cond = _inputs(cfg, kind="tokens")
    assert torch.equal(UNet(cfg)(x, noise, cond), torch.zeros_like(x))


def test_scalar_noise_label_broadcasts() -> None:
    net = _randomize(UNet(_config("none")))
    x, _, _ = _inputs(net.config)
    assert torch.equal(net(x, torch.tensor(0.3)), net(x, torch.full((4,), 0.3)))


def test_bad_inputs_are_rejected_with_shapes() -> None:
    net = UNet(_config("none"))  # 2 levels: H and W must be even
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.zeros(1, 3, 15, 16), torch.zeros(1))
    with pytest.raises(ValueError, match="noise_labels"):
        net(torch.zeros(2, 3, 16, 16), torch.zeros(3))


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(ValueError, match="tiny.*small.*base"):
        unet_config("huge")


def test_preset_sizes() -> None:
    counts = {name: sum(p.numel() for p in UNet(unet_config(name)).parameters()) for name in UNET_PRESETS}
    assert 5_000 <= counts["tiny"] <= 100_000
    assert 2_000_000 <= counts["small"] <= 7_000_000
    assert counts["base"] > counts["small"]


def test_config_round_trip_rebuilds_same_state_dict() -> None:
    import json

    cfg = _config("tokens", in_channels=1, out_channels=2, dropout=0.1)
    again = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    a, b = UNet(cfg).state_dict(), UNet(again).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({**cfg.to_dict(), "width": 3})


def test_config_saved_before_adaptive_norm_loads_with_its_blocks() -> None:
    """A config dict without ``emb_mode`` (runs saved before adaptive group norm) rebuilds the
    add-before-norm blocks its weights belong to; new configs use scale and shift."""
    cfg = _config("vector")
    assert cfg.emb_mode == "scale_shift"
    legacy = {k: v for k, v in cfg.to_dict().items() if k != "emb_mode"}
    old = UNetConfig.from_dict(legacy)
    assert old.emb_mode == "shift"
    new, old_net = UNet(cfg), UNet(old)
    assert new.shift_proj.out_features == 2 * old_net.shift_proj.out_features
    assert old_net.encoder[0].blocks[0].conv1.bias is None and new.encoder[0].blocks[0].conv1.bias is not None


def test_embedding_reaches_one_channel_groups() -> None:
    """With one channel per group (tiny's 16-wide level, norm_groups=16), a different noise level
    changes the first block's output only through the adaptive norm."""
    outs = {}
    for mode in ("scale_shift", "shift"):
        net = _randomize(UNet(unet_config("tiny", norm_groups=16, emb_mode=mode)))
        x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
        h = net.conv_in(x)
        shifts = net._shifts(torch.tensor([-1.0, 1.0]), None)
        out = net.encoder[0].blocks[0](h, shifts[0])
        outs[mode] = (out[0] - out[1]).abs().max().item()
    assert outs["shift"] < 1e-4 < outs["scale_shift"]


@pytest.mark.parametrize("bad", [dict(cross_attention=True), dict(resolution=15), dict(head_dim=5),
                                 dict(emb_mode="film")])
def test_invalid_config(bad: dict) -> None:
    with pytest.raises(ValueError):
        unet_config("tiny", **bad)


def test_state_dict_reloads_and_saves_as_safetensors() -> None:
    from safetensors.torch import load, save

    net = _randomize(UNet(_config("vector")))
    state = net.state_dict()
    assert set(state) == {name for name, _ in net.named_parameters()}  # no buffers at all
    other = UNet(_config("vector"))
    other.load_state_dict(load(save(state)), strict=True)
    x, noise, cond = _inputs(net.config, kind="vector")
    assert torch.equal(net(x, noise, cond), other(x, noise, cond))


def test_unconditional_model_has_no_condition_layers() -> None:
    names = [n for n, _ in UNet(_config("none")).named_parameters()]
    assert not any("cond" in n or "cross" in n for n in names)


# --- behaviour ------------------------------------------------------------------------------


def test_deterministic_bitwise() -> None:
    net = _randomize(UNet(_config("tokens")))
    x, noise, cond = _inputs(net.config, kind="tokens")
    assert torch.equal(net(x, noise, cond), net(x, noise, cond))


def test_masked_tokens_get_no_weight_and_empty_rows_are_finite() -> None:
    net = _randomize(UNet(_config("tokens")))
    x, noise, cond = _inputs(net.config, kind="tokens")
    out = net(x, noise, cond)
    assert torch.isfinite(out).all()
    padded = cond.tokens.clone()
    padded[~cond.mask] = 1e4  # change only padding
    again = net(x, noise, Conditioning(vector=cond.vector, tokens=padded, mask=cond.mask))
    torch.testing.assert_close(again, out, rtol=0, atol=1e-5)
    # A row without real tokens behaves as if no tokens were given at all.
    no_tokens = net(x, noise, Conditioning(vector=cond.vector))
    torch.testing.assert_close(out[2], no_tokens[2], rtol=0, atol=1e-5)
    assert not torch.allclose(out[1], no_tokens[1])


@pytest.mark.parametrize("kind,overrides", [("vector", {}), ("tokens", {}), ("tokens", {"vector_cond": False})])
def test_gradients_reach_every_parameter(kind: str, overrides: dict) -> None:
    net = _randomize(UNet(_config(kind, dropout=0.1, **overrides)))
    x, noise, cond = _inputs(net.config, kind=kind)
    if not net.config.vector_cond:
        cond = Conditioning(tokens=cond.tokens, mask=cond.mask)
    net(x, noise, cond).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_bf16_autocast_forward_and_backward() -> None:
    net = _randomize(UNet(_config("tokens")))
    x, noise, cond = _inputs(net.config, kind="tokens")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, noise, cond)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    with torch.no_grad():
        ref = net(x, noise, cond)
    # measured 0.97% of the largest output (bfloat16 keeps 8 bits of mantissa)
    assert (out.float() - ref).abs().max() < 0.025 * ref.abs().max()


@pytest.mark.skipif(not kernels.available(), reason=f"compiled kernels unavailable: {kernels.status()}")
def test_bf16_training_gradients_channels_last_as_close_as_nchw() -> None:
    """bf16 autocast training runs channels-last (compiled norm forward and backward, Winograd
    convolutions): its parameter gradients are as close to the float32 ones as NCHW's."""
    net = _randomize(UNet(_config("tokens")))
    x, noise, cond = _inputs(net.config, size=32, kind="tokens")

    def grads(memory_format: str, autocast: bool) -> torch.Tensor:
        net.config.memory_format = memory_format
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = net(x, noise, cond)
        out.float().square().mean().backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    try:
        exact = grads("contiguous", autocast=False)
        errors = {fmt: ((grads(fmt, autocast=True) - exact).norm() / exact.norm()).item()
                  for fmt in ("auto", "contiguous")}
    finally:
        net.config.memory_format = "auto"
    assert errors["auto"] < 0.02  # bfloat16 activations: 0.4% measured
    assert errors["auto"] <= 1.5 * errors["contiguous"]


@pytest.mark.skipif(not kernels.available(), reason=f"compiled kernels unavailable: {kernels.status()}")
@pytest.mark.parametrize("kind", ["none", "tokens"])
def test_bf16_runs_channels_last_and_matches_nchw(kind: str, monkeypatch) -> None:
    """Under bf16 autocast the network runs channels-last (compiled norm), with or without
    gradients; NCHW on request. The outputs agree to bfloat16 precision."""
    net = _randomize(UNet(_config(kind)))
    x, noise, cond = _inputs(net.config, size=32, kind=kind)
    layouts = []
    conv_in = net.conv_in.forward
    monkeypatch.setattr(net.conv_in, "forward", lambda h: layouts.append(
        "cl" if h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous() else "nchw")
        or conv_in(h))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = net(x, noise, cond)
        net.config.memory_format = "contiguous"
        nchw = net(x, noise, cond)
        net.config.memory_format = "auto"
    with torch.no_grad():
        reference = net(x, noise, cond)  # float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x, noise, cond)  # gradients on: the training layout
    assert layouts == ["cl", "nchw", "cl", "cl"]
    scale = nchw.float().abs().max()
    assert (fast.float() - nchw.float()).abs().max() < 0.05 * scale
    # no less accurate than the NCHW path (which rounds to bfloat16 more often)
    assert (fast.float() - reference).abs().max() <= 2 * (nchw.float() - reference).abs().max() + 1e-3


FLAGS = [("contiguous", False), ("channels_last", False), ("contiguous", True), ("channels_last", True),
         ("auto", True)]


@pytest.mark.parametrize("kind,emb_mode", [("none", "scale_shift"), ("tokens", "scale_shift"), ("tokens", "shift")])
def test_fast_paths_match_reference(kind: str, emb_mode: str) -> None:
    """memory_format / fast_ops change speed only: same outputs and gradients as plain ops."""
    nets = {flags: UNet(_config(kind, memory_format=flags[0], fast_ops=flags[1], emb_mode=emb_mode))
            for flags in FLAGS}
    ref = _randomize(nets[FLAGS[0]])
    x, noise, cond = _inputs(ref.config, size=32, kind=kind)
    ref_out = ref(x, noise, cond)
    ref_out.square().mean().backward()
    for flags, net in list(nets.items())[1:]:
        net.load_state_dict(ref.state_dict())
        out = net(x, noise, cond)
        torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
        out.square().mean().backward()
        for (name, p), q in zip(net.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_inference_mode_matches_grad_mode(fixed_rule) -> None:
    """(Measured plans may give a layer's training and inference forward different methods.)"""
    net = _randomize(UNet(_config("vector")))
    x, noise, cond = _inputs(net.config, kind="vector")
    with torch.inference_mode():
        fast = net(x, noise, cond)
    torch.testing.assert_close(fast, net(x, noise, cond), rtol=0, atol=1e-6)


# --- shared blocks --------------------------------------------------------------------------


@pytest.mark.parametrize("act", [True, False])
@pytest.mark.parametrize("groups,channels", [(4, 8), (8, 8)])
def test_group_norm_act_matches_reference_in_float64(act: bool, groups: int, channels: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, channels, 5, 6, generator=g, dtype=torch.float64) * 3 + 1)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w, b, e = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
               for s in [(channels,), (channels,), (2, channels)])
    _assert_fused_matches_reference(x, w, b, groups, e, act)


def _assert_fused_matches_reference(x, w, b, groups: int, shift, act: bool) -> None:
    """Fused and reference group norm agree on the output and every input's gradient."""
    inputs = tuple(t for t in (x, w, b, shift) if t is not None)

    def run(fused: bool):
        if fused:
            y = fused_group_norm_act(x, w, b, groups, shift, act=act)
        else:
            y = group_norm_act(x, w, b, groups, shift, act=act, fast=False)
        return (y, *torch.autograd.grad(y, inputs, torch.ones_like(y) + y.detach()))

    for got, want in zip(run(True), run(False)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("act", [True, False])
@pytest.mark.parametrize("groups,channels", [(4, 8), (8, 8)])
def test_per_sample_affine_matches_reference_in_float64(act: bool, groups: int, channels: int) -> None:
    """[B, C] weight and bias (adaptive group norm) get per-sample gradients from the fused path."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(3, channels, 5, 6, generator=g, dtype=torch.float64) * 3 + 1)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w, b = (torch.randn(3, channels, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    _assert_fused_matches_reference(x, w, b, groups, None, act)
    # Row i is the plain group norm of row i with row i's affine parameters.
    y = group_norm_act(x, w, b, groups, act=False, fast=False)
    torch.testing.assert_close(y[1], F.group_norm(x[1:2], groups, w[1], b[1])[0])


def test_adaptive_group_norm_reaches_one_channel_groups() -> None:
    """The reason for scale_shift: a pre-norm shift vanishes when each group is one channel; the
    adaptive norm's scale and shift still change the output."""
    norm = GroupNorm2d(8, max_groups=8, act=False)
    x, shift = torch.randn(2, 8, 4, 4), torch.randn(2, 8)
    torch.testing.assert_close(norm(x, shift), norm(x), rtol=0, atol=1e-5)
    zero = torch.zeros(2, 8)
    torch.testing.assert_close(norm.modulated(x, zero, zero), norm(x), rtol=0, atol=1e-6)
    out = norm.modulated(x, torch.full((2, 8), 1.0), shift)
    torch.testing.assert_close(out, norm(x) * 2 + shift[:, :, None, None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_per_sample_affine_bf16_input(fmt: torch.memory_format) -> None:
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=fmt) * 2 + 3
    w, b = torch.rand(2, 16) + 0.5, torch.randn(2, 16)
    want = F.silu(F.group_norm(x, 8) * w[:, :, None, None] + b[:, :, None, None])
    for got in (group_norm_act(x.bfloat16(), w, b, 8), fused_group_norm_act(x.bfloat16(), w, b, 8)):
        assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(got.float(), want, rtol=0.03, atol=0.03)


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_group_norm_act_bf16_input(fmt: torch.memory_format) -> None:
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=fmt) * 2 + 3
    w, b = torch.ones(16), torch.zeros(16)
    for got in (group_norm_act(x.bfloat16(), w, b, 8), fused_group_norm_act(x.bfloat16(), w, b, 8)):
        assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(got.float(), F.silu(F.group_norm(x, 8)), rtol=0.02, atol=0.02)


def test_low_precision_attention_matches_sdpa() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 16, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 1, 7, generator=g) > 0.4
    mask[..., 0] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)  # the explicit CPU path
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.03, atol=0.03)


def test_masked_tokens_get_no_weight_under_bf16_autocast() -> None:
    net = _randomize(UNet(_config("tokens")))
    x, noise, cond = _inputs(net.config, kind="tokens")
    padded = cond.tokens.clone()
    padded[~cond.mask] = 1e4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, noise, cond)
        again = net(x, noise, Conditioning(vector=cond.vector, tokens=padded, mask=cond.mask))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_upsample_equals_nearest_then_conv() -> None:
    up = Upsample2d(6)
    x = torch.randn(2, 6, 4, 5).contiguous(memory_format=torch.channels_last)
    fast = up(x)
    up.fast = False
    torch.testing.assert_close(fast, up(x), rtol=1e-5, atol=1e-5)
