"""The compiled Winograd F(2x2, 3x3) and F(4x4, 3x3) convolutions against float64 convolutions,
and their use in :class:`limner.nn.Conv2d`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import limner.nn.conv as conv
from limner.nn import Conv2d, kernels

needs_kernel = pytest.mark.skipif(
    not kernels.available(), reason=f"compiled kernels unavailable: {kernels.status()}")

CL = torch.channels_last


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _rel2(a, b):
    """Relative error in the Euclidean norm: the mean effect of rounding, where the largest
    error (_rel) is one bfloat16 rounding step of the largest value for either method."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


CASES = [  # N, Cin, Cout, H, W, bias
    (2, 32, 32, 16, 16, True),
    (3, 16, 48, 12, 20, False),  # non-square, a 16-wide output column tile
    (1, 64, 16, 4, 4, True),  # one F(4x4) tile: most of its inputs are padding
    (5, 48, 32, 8, 4, True),  # tiles per block not a multiple of the map's tiles
    (2, 96, 128, 12, 12, False),
]
F2_ONLY = [(3, 16, 48, 6, 10, False), (1, 32, 16, 2, 2, True)]  # sizes F(4x4, 3x3) cannot tile

# Relative error bounds against float64: F(2x2, 3x3) rounds no worse than oneDNN's direct method;
# F(4x4, 3x3)'s larger transform constants cost about ten times that (as in the literature).
BOUND = {2: 2e-6, 4: 3e-5}


@needs_kernel
@pytest.mark.parametrize("N,Cin,Cout,H,W,bias,tile",
                         [(*case, tile) for case in CASES for tile in (2, 4)] + [(*case, 2) for case in F2_ONLY])
def test_winograd_matches_float64_convolution(N, Cin, Cout, H, W, bias, tile):
    g = torch.Generator().manual_seed(N * Cin + H * W)
    x = (torch.randn(N, Cin, H, W, generator=g) * 3 + 1).contiguous(memory_format=CL)
    w = torch.randn(Cout, Cin, 3, 3, generator=g) * 0.2
    b = torch.randn(Cout, generator=g) if bias else None
    assert kernels.supports_winograd(x, w, (1, 1), (1, 1), (1, 1), 1)
    y = kernels.winograd_conv3x3(x, kernels.winograd_filter(w, tile=tile), b)
    ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
    onednn = F.conv2d(x, w, b, padding=1)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=CL)
    assert _rel(y, ref) < max(2 * _rel(onednn, ref), BOUND[tile])
    # the input gradient: the same kernel with the filters rotated and the channels swapped
    xr = x.double().requires_grad_()
    gy = torch.randn(N, Cout, H, W, generator=g).contiguous(memory_format=CL)
    F.conv2d(xr, w.double(), padding=1).backward(gy.double())
    gx = kernels.winograd_conv3x3(gy, kernels.winograd_filter(w, rotate=True, tile=tile))
    assert gx.shape == x.shape and _rel(gx, xr.grad) < BOUND[tile]
    # the filter gradient in Winograd's domain: G^T (sum over tiles of V^T A gy A^T) G
    wr = w.double().requires_grad_()
    F.conv2d(x.double(), wr, padding=1).backward(gy.double())
    gw = kernels.winograd_weight_grad(x, gy, tile=tile)
    assert gw.shape == w.shape and gw.is_contiguous() and _rel(gw, wr.grad) < BOUND[tile]


@needs_kernel
def test_winograd_weight_gradient_repeats_bitwise_and_checks_its_tile():
    """Exact resume needs the same filter gradient from the same inputs (the tile transforms
    are per tile; the sum over tiles is one batched matrix product)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 32, 16, 16, generator=g).contiguous(memory_format=CL)
    gy = torch.randn(8, 48, 16, 16, generator=g)  # NCHW: made channels-last inside
    first = kernels.winograd_weight_grad(x, gy, tile=4)
    assert all(torch.equal(kernels.winograd_weight_grad(x, gy, tile=4), first) for _ in range(3))
    with pytest.raises(ValueError, match="divisible by 4"):
        kernels.winograd_weight_grad(x[..., :6, :6], gy[..., :6, :6], tile=4)
    with pytest.raises(ValueError, match="tile must be 2 or 4"):
        kernels.winograd_weight_grad(x, gy, tile=3)


@needs_kernel
@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_weight_gradient_in_chunks_of_samples_keeps_its_scratch_bounded(tile, monkeypatch):
    """Large batches go through the tile transforms a few samples at a time (the transforms are
    ~2-4x the maps): the same gradient to rounding, the same bits on a repeat."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 32, 8, 12, generator=g).contiguous(memory_format=CL)
    gy = torch.randn(7, 16, 8, 12, generator=g).contiguous(memory_format=CL)
    whole = kernels.winograd_weight_grad(x, gy, tile=tile)
    per_sample = 4 * (tile + 2) ** 2 * (8 // tile) * (12 // tile) * (32 + 16)
    monkeypatch.setattr(kernels, "WGRAD_SCRATCH_BYTES", 3 * per_sample)  # chunks of 3, 3 and 1
    chunked = kernels.winograd_weight_grad(x, gy, tile=tile)
    assert torch.equal(kernels.winograd_weight_grad(x, gy, tile=tile), chunked)
    wr = torch.zeros(16, 32, 3, 3, dtype=torch.float64, requires_grad=True)
    F.conv2d(x.double(), wr, padding=1).backward(gy.double())
    assert _rel(chunked, wr.grad) < BOUND[tile] and _rel(chunked, whole) < BOUND[tile]


@needs_kernel
def test_f4_refuses_maps_it_cannot_tile():
    x = torch.randn(1, 16, 6, 6).contiguous(memory_format=CL)
    with pytest.raises(ValueError, match="divisible by 4"):
        kernels.winograd_conv3x3(x, kernels.winograd_filter(torch.randn(16, 16, 3, 3), tile=4))
    with pytest.raises(ValueError, match="tile must be 2 or 4"):
        kernels.winograd_filter(torch.randn(16, 16, 3, 3), tile=3)


@needs_kernel
@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_results_do_not_depend_on_the_thread_count(tile):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 32, 16, 16, generator=g).contiguous(memory_format=CL)
    U = kernels.winograd_filter(torch.randn(64, 32, 3, 3, generator=g), tile=tile)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(kernels.winograd_conv3x3(x, U))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(o, outs[0]) for o in outs[1:])


def test_supports_winograd_only_where_the_kernel_applies():
    x = torch.randn(2, 32, 16, 16).contiguous(memory_format=CL)
    w = torch.randn(32, 32, 3, 3)
    ok = ((1, 1), (1, 1), (1, 1), 1)
    assert kernels.supports_winograd(x, w, *ok) == kernels.available()
    assert not kernels.supports_winograd(x.contiguous(), w, *ok)  # NCHW
    assert not kernels.supports_winograd(x.double(), w.double(), *ok)
    assert not kernels.supports_winograd(x.half(), w, *ok)
    assert kernels.supports_winograd(x.bfloat16(), w, *ok) == kernels.available()  # bfloat16 autocast's maps
    assert not kernels.supports_winograd(x.bfloat16(), w.bfloat16(), *ok)  # the weight stays float32
    assert not kernels.supports_winograd(x, w, (2, 2), (1, 1), (1, 1), 1)  # strided
    assert not kernels.supports_winograd(x, w, (1, 1), (0, 0), (1, 1), 1)  # no padding
    assert not kernels.supports_winograd(x, w, (1, 1), "same", (1, 1), 1)
    assert not kernels.supports_winograd(x, w, (1, 1), (1, 1), (2, 2), 1)  # dilated
    assert not kernels.supports_winograd(x, torch.randn(32, 16, 3, 3), (1, 1), (1, 1), (1, 1), 2)  # groups
    assert not kernels.supports_winograd(x, torch.randn(32, 32, 1, 1), *ok)  # 1x1
    assert not kernels.supports_winograd(x[..., :15], w, *ok)  # odd width
    assert not kernels.supports_winograd(torch.randn(2, 24, 16, 16).contiguous(memory_format=CL),
                                         torch.randn(32, 24, 3, 3), *ok)  # 24 input channels


def _rule_tile(fast, x):
    """The Winograd tile the fixed rule (the suite's setting: LIMNER_CONV_TUNE=0) gives the
    forward of ``fast(x)``, or 0 for oneDNN."""
    if not fast._winograd_eligible(x):
        return 0
    return fast._default_plan(x, fast._candidates(x, bfloat16=False, training=True)).tile("forward")


def _conv_pair(cin=32, cout=64, bias=True):
    torch.manual_seed(0)
    fast = Conv2d(cin, cout, 3, padding=1, bias=bias)
    plain = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
    plain.load_state_dict(fast.state_dict())
    return fast, plain


@needs_kernel
@pytest.mark.parametrize("tile,size", [(4, 16), (2, 16), (4, 10)])  # 10x10: F(2x2) under tile 4
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_trains_through_winograd_like_nn_conv2d(bias, tile, size, monkeypatch):
    monkeypatch.setattr(conv, "WINOGRAD_TILE", tile)
    fast, plain = _conv_pair(bias=bias)
    x = torch.randn(4, 32, size, size).contiguous(memory_format=CL)
    go = torch.randn(4, 64, size, size)
    assert _rule_tile(fast, x) == (2 if size % 4 else tile)
    outs = []
    for module in (fast, plain):
        xi = x.clone().requires_grad_()
        y = module(xi)
        y.backward(go)
        outs.append((y.detach(), xi.grad, module.weight.grad, module.bias.grad if bias else None))
        if module is fast:
            assert type(y.grad_fn).__name__ == "_PlannedConv3x3Backward"
    (y1, gx1, gw1, gb1), (y2, gx2, gw2, gb2) = outs
    assert _rel(y1, y2) < 2 * BOUND[tile] and _rel(gx1, gx2) < 2 * BOUND[tile]
    if _rule_tile(fast, x) == 4:  # F(4x4, 3x3): the filter gradient in Winograd's domain too
        assert _rel(gw1, gw2) < 2 * BOUND[4]
        if bias:
            torch.testing.assert_close(gb1, gb2, rtol=1e-5, atol=1e-4)
    else:  # F(2x2, 3x3): the filter and bias gradients are oneDNN's, as nn.Conv2d's
        assert torch.equal(gw1, gw2)
        if bias:
            assert torch.equal(gb1, gb2)
    monkeypatch.setattr(conv, "WINOGRAD_WGRAD", False)  # LIMNER_WINOGRAD_WGRAD=0: oneDNN's for every tile
    fast.weight.grad = None
    xi = x.clone().requires_grad_()
    fast(xi).backward(go)
    assert torch.equal(fast.weight.grad, gw2)


@needs_kernel
def test_conv2d_keeps_the_transformed_filter_for_inference_until_the_weight_changes():
    fast, _ = _conv_pair()
    x = torch.randn(2, 32, 16, 16).contiguous(memory_format=CL)
    with torch.no_grad():
        first = fast(x)
        kept = fast._packed.entry[2]
        assert torch.equal(fast(x), first) and fast._packed.entry[2] is kept  # reused
        fast.weight.mul_(-1)  # an optimizer step or EMA swap
        after = fast(x)
    assert fast._packed.entry[2] is not kept
    assert _rel(after, F.conv2d(x, fast.weight, fast.bias, padding=1)) < 2 * BOUND[conv.WINOGRAD_TILE]
    with torch.inference_mode():
        assert _rel(fast(x), after) < 1e-7


@needs_kernel
def test_conv2d_leaves_other_convolutions_to_onednn(monkeypatch, fixed_rule):
    """Small maps, NCHW, float16 autocast, bfloat16 autocast with LIMNER_WINOGRAD_BF16=0, a
    bfloat16 map outside autocast (nn.Conv2d refuses it: the weight is float32) and fast=False."""
    calls = []
    real = kernels.winograd_conv3x3
    monkeypatch.setattr(kernels, "winograd_conv3x3", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast, plain = _conv_pair()
    small = torch.randn(2, 32, 4, 4).contiguous(memory_format=CL)  # below the size where it pays
    with torch.no_grad():
        assert torch.equal(fast(small), plain(small))
        fast(small.contiguous())  # NCHW
        with torch.autocast("cpu", dtype=torch.float16):
            fast(torch.randn(2, 32, 16, 16).contiguous(memory_format=CL))
        monkeypatch.setattr(conv, "WINOGRAD_BF16", False)  # LIMNER_WINOGRAD_BF16=0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fast(torch.randn(2, 32, 16, 16).contiguous(memory_format=CL)).dtype == torch.bfloat16
        with pytest.raises(RuntimeError):  # as nn.Conv2d: a bfloat16 input needs a bfloat16 weight
            fast(torch.randn(2, 32, 16, 16).contiguous(memory_format=CL).bfloat16())
        fast.fast = False
        fast(torch.randn(2, 32, 16, 16).contiguous(memory_format=CL))
    assert calls == []
    fast.fast = True
    with torch.no_grad():
        fast(torch.randn(2, 32, 16, 16).contiguous(memory_format=CL))
    assert calls == [1]


@needs_kernel
def test_winograd_can_be_switched_off_or_to_small_tiles(monkeypatch):
    fast, _ = _conv_pair()
    x = torch.randn(2, 32, 16, 16).contiguous(memory_format=CL)
    for value, tile in (("0", 0), ("off", 0), ("2", 2), ("4", 4), ("", 4), ("7", 4)):
        monkeypatch.setenv("LIMNER_WINOGRAD", value)
        monkeypatch.setattr(conv, "WINOGRAD_TILE", conv._winograd_setting())
        assert _rule_tile(fast, x) == tile, value


@needs_kernel
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_winograd_bfloat16_maps_are_the_float32_convolution_rounded_once(tile, bias):
    """bfloat16 in or out changes only the loads and stores: a bfloat16 input is widened exactly
    and a bfloat16 output is the float32 result rounded to nearest, ties to even (PyTorch's
    rounding), bit for bit; NaN stays NaN."""
    g = torch.Generator().manual_seed(11 + tile)
    x = (torch.randn(3, 32, 12, 16, generator=g) * 3 + 1).contiguous(memory_format=CL)
    xb = x.bfloat16()
    U = kernels.winograd_filter(torch.randn(48, 32, 3, 3, generator=g) * 0.2, tile=tile)
    b = torch.randn(48, generator=g) if bias else None
    widened = kernels.winograd_conv3x3(xb.float(), U, b)  # the float32 path on the same values
    both = kernels.winograd_conv3x3(xb, U, b, out_dtype=torch.bfloat16)
    assert both.dtype == torch.bfloat16 and both.is_contiguous(memory_format=CL)
    assert torch.equal(both, widened.bfloat16())
    assert torch.equal(kernels.winograd_conv3x3(xb, U, b, out_dtype=torch.float32), widened)
    assert kernels.winograd_conv3x3(xb, U, b).dtype == torch.bfloat16  # default: the input's dtype
    assert torch.equal(kernels.winograd_conv3x3(x, U, b, out_dtype=torch.bfloat16),
                       kernels.winograd_conv3x3(x, U, b).bfloat16())
    xb[0, 5, 3, 7] = float("nan")
    assert kernels.winograd_conv3x3(xb, U, b)[0, :, 2:5, 6:9].isnan().all()
    with pytest.raises(TypeError, match="float32 and bfloat16"):
        kernels.winograd_conv3x3(x.half(), U)


def _autocast_step(module, x, go):
    xi = x.clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(xi)
    y.backward(go)
    return y, xi.grad, module.weight.grad, None if module.bias is None else module.bias.grad


@needs_kernel
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tile,size", [(4, 16), (2, 16), (4, 10)])
def test_conv2d_under_bfloat16_autocast_computes_in_float32_and_rounds_like_onednn(x_dtype, tile, size,
                                                                                  monkeypatch):
    """Under CPU bfloat16 autocast the 3x3 convolutions run the float32 Winograd kernel on the
    bfloat16 maps: the output and input gradient in the dtypes autocast gives (bfloat16 output,
    the input's dtype for its gradient), the weight gradient from oneDNN's bfloat16 backward as
    autocast computes it, and each at least as close to float64 as oneDNN's bfloat16 convolution."""
    monkeypatch.setattr(conv, "WINOGRAD_TILE", tile)
    fast, plain = _conv_pair()
    g = torch.Generator().manual_seed(size)
    x = (torch.randn(4, 32, size, size, generator=g) * 2).to(x_dtype).contiguous(memory_format=CL)
    go = torch.randn(4, 64, size, size, generator=g).bfloat16().contiguous(memory_format=CL)
    y1, gx1, gw1, gb1 = _autocast_step(fast, x, go)
    y2, gx2, gw2, gb2 = _autocast_step(plain, x, go)
    assert type(y1.grad_fn).__name__ == "_PlannedConv3x3Backward"
    assert y1.dtype == y2.dtype == torch.bfloat16 and gx1.dtype == gx2.dtype == x_dtype
    assert gw1.dtype == gb1.dtype == torch.float32
    # float64 references from the input and the float32 weight (the model's parameter): oneDNN
    # rounds a float32 input, the weight and the result to bfloat16, the Winograd path the result
    wd = fast.weight.detach().double().requires_grad_()
    xd = x.double().requires_grad_()
    yd = F.conv2d(xd, wd, fast.bias.detach().double(), padding=1)
    yd.backward(go.double())
    assert _rel2(y1, yd) < _rel2(y2, yd) < 0.01
    assert _rel2(gx1, xd.grad) < _rel2(gx2, xd.grad) < 0.01
    assert _rel2(gw1, wd.grad) < 0.01 and torch.equal(gw1, gw2)  # the same oneDNN bfloat16 product
    exact_gb = go.double().sum((0, 2, 3))
    assert _rel2(gb1, exact_gb) <= _rel2(gb2, exact_gb)
    # sampling: the same kernel without the autograd function, the same bits
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fast(x), y1.detach())
