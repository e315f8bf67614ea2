"""limner.nn.Conv2d's reordered-weight inference path: same results as nn.Conv2d, taken only
where it is valid, and remade whenever the weight changes."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from limner.models.diffusion.unet import UNet, unet_config
from limner.nn import Conv2d, Upsample2d, prepack_available
from limner.nn import conv as conv_module
from limner.training.ema import EMA

needs_prepack = pytest.mark.skipif(not prepack_available(), reason="this PyTorch build has no oneDNN prepacking")

needs_bf16 = pytest.mark.skipif(not conv_module.cpu_bf16_native(),
                                reason="this CPU has no bfloat16 vector instructions (AVX2 only): oneDNN cannot "
                                       "reorder bfloat16 weights, so the packed bfloat16 path is off here")

CL = torch.channels_last


def _conv(*args, seed=0, **kwargs) -> Conv2d:
    torch.manual_seed(seed)
    return Conv2d(*args, **kwargs).eval()


def _input(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).contiguous(memory_format=CL)


def _reference(conv: Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


CASES = [  # (in, out, kernel, kwargs, input shape)
    ((32, 32, 3), {"padding": 1}, (4, 32, 16, 16)),
    ((64, 128, 3), {"padding": 1, "stride": 2}, (2, 64, 9, 7)),  # strided, odd map
    ((96, 32, 1), {}, (3, 96, 8, 8)),  # 1x1 projection
    ((3, 16, 3), {"padding": 1, "bias": False}, (1, 3, 5, 5)),  # no bias, 3 input channels
    ((16, 16, 3), {"padding": 2, "dilation": 2, "groups": 4}, (2, 16, 12, 12)),
]


@needs_prepack
@pytest.mark.parametrize("args,kwargs,shape", CASES)
def test_packed_matches_plain_convolution(args, kwargs, shape):
    conv, x = _conv(*args, **kwargs), _input(shape)
    with torch.inference_mode():
        y = conv(x)
    assert conv._packed.entry is not None, "the packed path was not taken"
    torch.testing.assert_close(y, _reference(conv, x), rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=CL)
    with torch.no_grad():  # no_grad as well as inference_mode, reusing the same packed weight
        torch.testing.assert_close(conv(x), y, rtol=0, atol=0)


@needs_prepack
@needs_bf16
@pytest.mark.parametrize("args,kwargs,shape", CASES)
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_packed_bfloat16_autocast_matches_autocast_bitwise(args, kwargs, shape, input_dtype, monkeypatch):
    """Under CPU bfloat16 autocast the reordered bfloat16 weight gives exactly what autocast's
    own convolution gives (the same oneDNN kernel, without re-casting and re-ordering the
    weight at every call), so sampling in bf16 replays bitwise whichever path ran. (The first
    case is a Winograd one: LIMNER_WINOGRAD_BF16=0 hands it to this path; test_winograd.py
    covers the Winograd side.)"""
    monkeypatch.setattr(conv_module, "WINOGRAD_BF16", False)
    conv, x = _conv(*args, **kwargs), _input(shape).to(input_dtype)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        assert conv._packed.entry is not None and conv._packed.entry[1][-1] == (tuple(x.shape), torch.bfloat16)
        conv.fast = False
        plain = conv(x)
        conv.fast = True
        again = conv(x)  # the kept bfloat16 weight
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y, plain, rtol=0, atol=0)
    torch.testing.assert_close(again, y, rtol=0, atol=0)
    x32 = _input(shape).to(input_dtype).float()
    with torch.no_grad():  # leaving autocast: float32 again, never the kept bfloat16 weight
        out = conv(x32)
        assert out.dtype == torch.float32 and conv._packed.entry[1][-1] != (tuple(x.shape), torch.bfloat16)
        torch.testing.assert_close(out, _reference(conv, x32), rtol=1e-4, atol=1e-4)


@needs_prepack
def test_without_bfloat16_instructions_autocast_runs_plain_and_float32_stays_packed(monkeypatch):
    """On an AVX2-only CPU oneDNN refuses bfloat16 weight reorders; the bf16 call must take
    autocast's own path without turning prepacking off for the float32 calls that follow."""
    monkeypatch.setattr(conv_module, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(conv_module, "_disabled_reason", None)
    monkeypatch.setattr(conv_module, "WINOGRAD_BF16", False)  # else this 3x3 convolution is Winograd's
    conv, x = _conv(32, 32, 3, padding=1), _input((2, 32, 8, 8))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        assert conv._packed.entry is None
        conv.fast = False
        plain = conv(x)
    torch.testing.assert_close(y, plain, rtol=0, atol=0)
    conv.fast = True
    with torch.inference_mode():
        conv(x)
    assert conv_module._disabled_reason is None and conv._packed.entry is not None


@needs_prepack
def test_weight_changes_are_seen():
    conv, x = _conv(16, 24, 3, padding=1), _input((2, 16, 8, 8))
    with torch.no_grad():
        before = conv(x)
        conv.weight.mul_(-2)  # in place: the version counter moves
        torch.testing.assert_close(conv(x), -2 * (before - conv.bias[:, None, None]) + conv.bias[:, None, None],
                                   rtol=1e-5, atol=1e-5)
        other = _conv(16, 24, 3, padding=1, seed=5)
        conv.load_state_dict(other.state_dict())
        torch.testing.assert_close(conv(x), other(x), rtol=1e-5, atol=1e-5)
        conv.weight.data = torch.randn_like(conv.weight)  # new storage
        torch.testing.assert_close(conv(x), _reference(conv, x), rtol=1e-5, atol=1e-5)
        conv.weight = torch.nn.Parameter(torch.randn_like(conv.weight))  # a new parameter object
        torch.testing.assert_close(conv(x), _reference(conv, x), rtol=1e-5, atol=1e-5)
        conv.bias.add_(1)  # the bias is never packed
        torch.testing.assert_close(conv(x), _reference(conv, x), rtol=1e-5, atol=1e-5)


@needs_prepack
def test_new_batch_size_repacks():
    conv = _conv(8, 8, 3, padding=1)
    with torch.no_grad():
        for batch in (4, 1, 4, 7):
            x = _input((batch, 8, 6, 6), seed=batch)
            torch.testing.assert_close(conv(x), _reference(conv, x), rtol=1e-5, atol=1e-5)
            assert conv._packed.entry[1][-1] == (tuple(x.shape), torch.float32)


def test_plain_path_where_prepacking_does_not_apply():
    conv = _conv(8, 8, 3, padding=1)
    x = _input((2, 8, 6, 6))
    y = conv(x)  # gradients on: training uses nn.Conv2d's path, and gradients flow
    y.sum().backward()
    assert conv.weight.grad is not None and conv._packed.entry is None
    with torch.no_grad():
        conv(x.contiguous())  # NCHW input
        with torch.autocast("cpu", dtype=torch.float16):  # not bfloat16: autocast's own path
            assert conv(x).dtype == torch.float16
        conv.fast = False
        conv(x)
    assert conv._packed.entry is None


def test_inference_mode_weights_take_the_plain_path():
    with torch.inference_mode():  # built in inference mode: no version counter to watch
        conv = Conv2d(4, 4, 3, padding=1).eval()
        x = _input((1, 4, 5, 5))
        y = conv(x)
        assert conv._packed.entry is None
        torch.testing.assert_close(y, _reference(conv, x))


@needs_prepack
def test_copies_pickles_and_train_mode_drop_the_packed_weight():
    conv, x = _conv(8, 8, 3, padding=1), _input((2, 8, 6, 6))
    with torch.no_grad():
        y = conv(x)
    assert conv._packed.entry is not None
    twin = copy.deepcopy(conv)
    restored = pickle.loads(pickle.dumps(conv))
    assert twin._packed.entry is None and restored._packed.entry is None
    assert set(conv.state_dict()) == {"weight", "bias"}
    with torch.no_grad():
        torch.testing.assert_close(twin(x), y, rtol=0, atol=0)
        torch.testing.assert_close(restored(x), y, rtol=0, atol=0)
    conv.train()
    assert conv._packed.entry is None


@needs_prepack
def test_a_failing_private_op_falls_back_for_good(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(conv_module, "_get_ops", lambda: None if conv_module._disabled_reason else (broken, broken))
    monkeypatch.setattr(conv_module, "_disabled_reason", None)
    conv, x = _conv(8, 8, 3, padding=1), _input((2, 8, 6, 6))
    with torch.no_grad(), caplog.at_level("WARNING"):
        torch.testing.assert_close(conv(x), _reference(conv, x))
        torch.testing.assert_close(conv(x), _reference(conv, x))
    assert "no such kernel" in caplog.text and caplog.text.count("prepacking failed") == 1


def test_upsample_kernel_is_kept_only_while_the_weight_is_unchanged():
    torch.manual_seed(0)
    up = Upsample2d(8).eval()
    x = _input((2, 8, 4, 4))
    literal = lambda: up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(up(x), literal(), rtol=1e-5, atol=1e-5)
        kept = up._kernel.entry[2]
        up(x)
        assert up._kernel.entry[2] is kept
        up.conv.weight.add_(0.5)
        torch.testing.assert_close(up(x), literal(), rtol=1e-5, atol=1e-5)
        assert up._kernel.entry[2] is not kept
    up._kernel.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = up(x)  # kept from a bf16 call, the kernel is still float32: autocast casts per call
    assert low.dtype == torch.bfloat16 and up._kernel.entry[2].dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(up(x), literal(), rtol=1e-5, atol=1e-5)
    up.train()
    assert up._kernel.entry is None


@needs_prepack
def test_unet_sampling_sees_ema_swaps_and_training_steps():
    """The path a sampler takes: EMA weights swapped in, many evaluations, swapped out, a
    training step, evaluate again; every output equals the same network with prepacking off."""
    torch.manual_seed(0)
    net = UNet(unet_config("tiny"))
    with torch.no_grad():  # no zero-initialised branches: every convolution shows in the output
        for p in net.parameters():
            p.normal_(0, 0.2)
    plain = UNet(unet_config("tiny"))
    ema = EMA({"net": net}, ["net"], decay=0.5, warmup=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(2, net.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(3))
    noise = torch.full((2,), 0.3)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))

    def outputs():
        plain.load_state_dict(net.state_dict())
        for m in plain.modules():
            if isinstance(m, Conv2d):
                m.fast = False
        net.eval(), plain.eval()
        with torch.no_grad():
            got, want = net(x, noise), plain(x, noise)
        assert any(m._packed.entry is not None for m in net.modules() if isinstance(m, Conv2d))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        net.train()
        return got

    def train_step():
        loss = (net(x, noise) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()

    train_step()
    first = outputs()
    with ema.swapped():
        swapped = outputs()
    train_step()
    after = outputs()
    assert not torch.equal(first, swapped) and not torch.equal(first, after)
