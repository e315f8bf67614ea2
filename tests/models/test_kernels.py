"""The compiled GroupNorm + SiLU kernel against the float64 reference ops, and its fallbacks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from limner.nn import kernels
from limner.nn.norms import GroupNorm2d, group_norm_act

needs_kernel = pytest.mark.skipif(
    not kernels.available(), reason=f"compiled kernels unavailable: {kernels.status()}")

CL = torch.channels_last


def _reference(x, weight, bias, groups, act):
    """float64 reference values and gradients via the PyTorch ops."""
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    y = group_norm_act(xr, wr, br, groups, act=act, fast=False)
    return xr, wr, br, y


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


CASES = [  # B, C, H, W, groups, per-sample affine, act
    (4, 32, 32, 32, 32, True, True),
    (3, 64, 16, 16, 32, False, True),
    (2, 96, 8, 8, 32, True, False),  # 3 channels per group, no activation
    (1, 24, 5, 7, 8, False, True),  # one sample, odd map, C not a multiple of the vector width
    (5, 128, 4, 4, 32, True, True),
    (2, 8, 33, 17, 1, False, True),  # one group, rows not a multiple of the row blocks
]


@needs_kernel
@pytest.mark.parametrize("B,C,H,W,groups,per_sample,act", CASES)
def test_kernel_matches_reference(B, C, H, W, groups, per_sample, act):
    g = torch.Generator().manual_seed(B * C + H)
    x = (torch.randn(B, C, H, W, generator=g) * 2 + 0.5).contiguous(memory_format=CL)
    shape = (B, C) if per_sample else (C,)
    weight, bias = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    y, a, b, mean, rstd = kernels.group_norm_act_forward(x, weight, bias, groups, 1e-5, act)
    assert y.is_contiguous(memory_format=CL) and y.dtype == torch.float32
    xr, wr, br, yr = _reference(x, weight, bias, groups, act)
    assert _rel(y, yr) < 2e-6
    gy = torch.randn(B, C, H, W, generator=g).contiguous(memory_format=CL)
    yr.backward(gy.double())
    gx, gw, gb = kernels.group_norm_act_backward(x, gy, weight, a, b, mean, rstd, groups, act)
    if not per_sample:
        gw, gb = gw.sum(0), gb.sum(0)
    assert _rel(gx, xr.grad) < 5e-6
    assert _rel(gw, wr.grad) < 5e-6
    assert _rel(gb, br.grad) < 5e-6


@needs_kernel
def test_kernel_is_accurate_when_the_mean_dwarfs_the_spread():
    """A large offset must not cancel the variance (the float block sums are shifted)."""
    g = torch.Generator().manual_seed(0)
    x = (1000.0 + torch.randn(2, 32, 32, 32, generator=g)).contiguous(memory_format=CL)
    weight, bias = torch.ones(32), torch.zeros(32)
    y, a, b, mean, rstd = kernels.group_norm_act_forward(x, weight, bias, 8, 1e-5, False)
    xr, wr, br, yr = _reference(x, weight, bias, 8, False)
    # float32 x itself carries ~6e-5 absolute error at 1000; the normalised output stays within it
    assert (y.double() - yr).abs().max().item() < 5e-4
    gy = torch.randn(2, 32, 32, 32, generator=g).contiguous(memory_format=CL)
    yr.backward(gy.double())
    gx = kernels.group_norm_act_backward(x, gy, weight, a, b, mean, rstd, 8, False)[0]
    assert _rel(gx, xr.grad) < 1e-3


@needs_kernel
def test_autograd_through_the_kernel_matches_the_reference_ops():
    """GroupNorm2d.modulated (the U-Net block's adaptive norm) with the kernel vs fast=False."""
    torch.manual_seed(0)
    norm = GroupNorm2d(64)
    x = torch.randn(4, 64, 16, 16).contiguous(memory_format=CL).requires_grad_()
    scale, shift = torch.randn(4, 64, requires_grad=True), torch.randn(4, 64, requires_grad=True)
    grads = []
    for fast in (True, False):
        norm.fast = fast
        for t in (x, scale, shift, norm.weight, norm.bias):
            t.grad = None
        out = norm.modulated(x, scale, shift)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([out.detach()] + [t.grad.clone() for t in (x, scale, shift, norm.weight, norm.bias)])
    for got, want in zip(*grads):
        assert _rel(got, want) < 1e-5


@needs_kernel
@pytest.mark.parametrize("dtype,layout", [(torch.float32, CL), (torch.bfloat16, torch.contiguous_format),
                                          (torch.bfloat16, CL)])
def test_kernel_results_do_not_depend_on_the_thread_count(dtype, layout):
    torch.manual_seed(1)
    x = torch.randn(8, 32, 16, 16).to(dtype).contiguous(memory_format=layout)
    w, b = torch.randn(8, 32), torch.randn(8, 32)
    gy = torch.randn(8, 32, 16, 16).to(dtype).contiguous(memory_format=layout)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            fwd = kernels.group_norm_act_forward(x, w, b, 32, 1e-5, True)
            outs.append([fwd[0], *kernels.group_norm_act_backward(x, gy, w, *fwd[1:], 32, True)])
    finally:
        torch.set_num_threads(before)
    for other in outs[1:]:
        assert all(torch.equal(p, q) for p, q in zip(outs[0], other))


@needs_kernel
def test_supports_only_what_the_kernel_handles():
    x = torch.randn(2, 32, 8, 8)
    w = torch.ones(32)
    assert kernels.supports(x.contiguous(memory_format=CL), w, 32)
    assert not kernels.supports(x, w, 32)  # NCHW
    assert not kernels.supports(x.contiguous(memory_format=CL).double(), w, 32)
    assert kernels.supports(x.contiguous(memory_format=CL).bfloat16(), w, 32)  # bfloat16: either layout
    assert kernels.supports(x.bfloat16(), w, 32)
    assert not kernels.supports(x.bfloat16().permute(0, 1, 3, 2), w, 32)  # neither layout
    assert not kernels.supports(x.bfloat16()[:, :, ::2], w, 32)
    assert not kernels.supports(x.bfloat16()[:0], w, 32)
    assert not kernels.supports(x.half(), w, 32)
    assert not kernels.supports(x.bfloat16(), w.bfloat16(), 32)
    assert not kernels.supports(x.contiguous(memory_format=CL), w, 5)  # groups do not divide C
    assert not kernels.supports(x.contiguous(memory_format=CL), torch.ones(3, 32), 32)  # wrong B
    assert not kernels.supports(x.contiguous(memory_format=CL)[:, :, ::2], w, 32)  # strided view


BF16_CASES = [  # B, C, H, W, groups, per-sample affine, act
    (4, 32, 32, 32, 32, True, True),
    (3, 96, 16, 16, 32, False, True),  # 3 channels per group
    (2, 128, 4, 4, 32, True, False),
    (1, 24, 5, 7, 8, False, True),  # odd map
    (2, 8, 40, 40, 1, True, True),  # one group longer than a summing span
]


def _bf16_reference(x, weight, bias, groups, act):
    """The exact function of the bfloat16 values, in float64 (what rounding once approximates)."""
    return group_norm_act(x.double(), weight.double(), bias.double(), groups, act=act, fast=False)


@needs_kernel
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("B,C,H,W,groups,per_sample,act", BF16_CASES)
def test_bf16_inference_kernel_matches_reference(B, C, H, W, groups, per_sample, act, layout):
    g = torch.Generator().manual_seed(B * C + H)
    x = (torch.randn(B, C, H, W, generator=g) * 2 + 0.5).bfloat16().contiguous(memory_format=layout)
    shape = (B, C) if per_sample else (C,)
    weight, bias = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    assert kernels.supports_bf16_inference(x, weight, groups)
    y = kernels.group_norm_act_forward_bf16(x, weight, bias, groups, 1e-5, act)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=layout)
    want = _bf16_reference(x, weight, bias, groups, act)
    # one rounding to bfloat16 (8 bits of mantissa): within half a unit in the last place,
    # plus float32 arithmetic before it
    err = (y.double() - want).abs() / want.abs().clamp_min(1e-2)
    assert err.max().item() < 2 ** -8 + 1e-5
    assert torch.equal(y, want.float().bfloat16()) or (y != want.float().bfloat16()).float().mean() < 1e-3


@needs_kernel
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("B,C,H,W,groups,per_sample,act", BF16_CASES)
def test_bf16_training_kernel_matches_reference(B, C, H, W, groups, per_sample, act, layout):
    """bfloat16 forward and backward, NCHW and channels-last, against the float64 function of the
    same bfloat16 values: y and dL/dx rounded once, the parameter gradients float32."""
    g = torch.Generator().manual_seed(B * C + H + 1)
    x = (torch.randn(B, C, H, W, generator=g) * 2 + 0.5).bfloat16().contiguous(memory_format=layout)
    shape = (B, C) if per_sample else (C,)
    weight, bias = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    gy = torch.randn(B, C, H, W, generator=g).bfloat16()  # NCHW: the backward takes any layout
    assert kernels.supports(x, weight, groups)
    y, a, b, mean, rstd = kernels.group_norm_act_forward(x, weight, bias, groups, 1e-5, act)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=layout)
    assert torch.equal(y, kernels.group_norm_act_forward_bf16(x, weight, bias, groups, 1e-5, act))  # same bits
    gx, gw, gb = kernels.group_norm_act_backward(x, gy, weight, a, b, mean, rstd, groups, act)
    assert gx.dtype == torch.bfloat16 and gx.is_contiguous(memory_format=layout)
    assert gw.dtype == gb.dtype == torch.float32
    xr, wr, br, yr = _reference(x, weight, bias, groups, act)
    yr.backward(gy.double())
    for got, want in ((y, yr.detach()), (gx, xr.grad)):
        # one rounding (half a bfloat16 unit: at most 2^-8 relative) plus float32 arithmetic, whose
        # error scales with the largest term (a g + p x + q may cancel)
        err = (got.double() - want).abs() - want.abs() * 2 ** -8
        assert err.max().item() < 1e-5 * want.abs().max().item()
    if not per_sample:
        gw, gb = gw.sum(0), gb.sum(0)
    assert _rel(gw, wr.grad) < 1e-5
    assert _rel(gb, br.grad) < 1e-5


@needs_kernel
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_bf16_training_kernel_keeps_a_nan_in_its_group(layout):
    x = torch.randn(3, 32, 8, 8).bfloat16().contiguous(memory_format=layout)
    x[0, 5, 1, 1] = float("nan")  # group 2 of sample 0 (4 channels per group)
    w, b, gy = torch.ones(32), torch.zeros(32), torch.randn(3, 32, 8, 8).bfloat16()
    y, *coeffs = kernels.group_norm_act_forward(x, w, b, 8, 1e-5, True)
    gx, gw, gb = kernels.group_norm_act_backward(x, gy, w, *coeffs, 8, True)
    for t in (y, gx):
        assert t[0, 4:8].isnan().all() and not t[0, :4].isnan().any() and not t[0, 8:].isnan().any()
        assert not t[1:].isnan().any()
    assert gw[0, 4:8].isnan().all() and not gw[1:].isnan().any()


@needs_kernel
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_bf16_training_under_autocast_uses_the_kernel(monkeypatch, layout):
    """A ResBlock-style norm under bfloat16 autocast with gradients: the kernel computes it, and its
    gradients are at least as close to the float64 truth as the reference ops' (which round after
    each of norm, affine map and SiLU)."""
    calls = []
    forward = kernels.group_norm_act_forward

    def counting(x, *args, **kwargs):
        calls.append(x.dtype)
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(kernels, "group_norm_act_forward", counting)
    torch.manual_seed(0)
    norm = GroupNorm2d(64)
    x0 = torch.randn(4, 64, 16, 16).bfloat16().contiguous(memory_format=layout)
    scale0, shift0 = torch.randn(4, 64), torch.randn(4, 64)
    gy = torch.randn(4, 64, 16, 16).bfloat16()
    results = {}
    for fast in (True, False):
        norm.fast = fast
        x, scale, shift = (t.clone().requires_grad_() for t in (x0, scale0, shift0))
        norm.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = norm.modulated(x, scale, shift)
        assert out.dtype == torch.bfloat16
        out.backward(gy)
        results[fast] = [out.detach(), x.grad, scale.grad, shift.grad, norm.weight.grad, norm.bias.grad]
    assert calls == [torch.bfloat16]  # the fast pass went through the kernel, the reference did not
    assert results[True][1].dtype == torch.bfloat16
    x, scale, shift = (t.double().requires_grad_() for t in (x0, scale0, shift0))
    w, b = (p.detach().double().requires_grad_() for p in (norm.weight, norm.bias))
    truth = group_norm_act(x, w * (1 + scale), b * (1 + scale) + shift, norm.groups, fast=False)
    truth.backward(gy.double())
    for i, want in enumerate([truth.detach(), x.grad, scale.grad, shift.grad, w.grad, b.grad]):
        fast_err = _rel(results[True][i], want)
        assert fast_err < 2 ** -7, i
        assert fast_err <= _rel(results[False][i], want) + 1e-6, i


@needs_kernel
def test_bf16_inference_kernel_is_used_under_autocast_without_gradients(monkeypatch):
    calls = []
    kernel = kernels.group_norm_act_forward_bf16

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(kernels, "group_norm_act_forward_bf16", counting)
    torch.manual_seed(0)
    norm = GroupNorm2d(64)
    x = torch.randn(2, 64, 8, 8).bfloat16()
    scale, shift = torch.randn(2, 64), torch.randn(2, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = norm.modulated(x, scale, shift)
        assert calls == [x.shape]  # the kernel computed it, not a fallback
        norm.fast = False
        reference = norm.modulated(x, scale, shift)
    assert len(calls) == 1
    assert fast.dtype == reference.dtype == torch.bfloat16
    assert _rel(fast, reference) < 2 ** -6  # a bfloat16 unit or two: the reference rounds 3 times
    want = _bf16_reference(x, norm.weight * (1 + scale), norm.bias * (1 + scale) + shift, norm.groups, True)
    assert (fast.double() - want).abs().max() <= (reference.double() - want).abs().max()
    x.requires_grad_()  # a gradient is needed: the autograd path, not the forward-only kernel
    norm.fast = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm.modulated(x, scale, shift)
    out.float().sum().backward()
    assert x.grad is not None and len(calls) == 1  # no forward-only kernel where a gradient is needed


@needs_kernel
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_bf16_inference_kernel_edge_values_and_threads(layout):
    x = torch.randn(4, 32, 8, 8).bfloat16()
    x[0, 0, 0, 0] = float("nan")  # poisons group 0 of sample 0 only
    x[1] += 1000.0  # the mean dwarfs the spread (the bfloat16 step at 1000 is 4)
    w, b = torch.ones(32), torch.zeros(32)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(kernels.group_norm_act_forward_bf16(x.contiguous(memory_format=layout), w, b, 16, 1e-5, False))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outs[0].nan_to_num(), o.nan_to_num()) for o in outs[1:])
    assert all(torch.equal(outs[0].isnan(), o.isnan()) for o in outs[1:])
    y = outs[0]
    assert y[0, :2].isnan().all() and not y[0, 2:].isnan().any() and not y[1:].isnan().any()
    want = _bf16_reference(x[1:], w, b, 16, False)
    assert (y[1:].double() - want).abs().max().item() < 0.02


@needs_kernel
def test_supports_bf16_inference_only_where_the_kernel_applies():
    x, w = torch.randn(2, 32, 8, 8).bfloat16(), torch.ones(32)
    assert kernels.supports_bf16_inference(x, w, 32)
    assert kernels.supports_bf16_inference(x.contiguous(memory_format=CL), w, 32)
    assert not kernels.supports_bf16_inference(x.float(), w, 32)
    assert not kernels.supports_bf16_inference(x.half(), w, 32)
    assert not kernels.supports_bf16_inference(x, w.bfloat16(), 32)
    assert not kernels.supports_bf16_inference(x, w, 5)
    assert not kernels.supports_bf16_inference(x[:, :, ::2], w, 32)


def _run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


_PROBE = """
import torch
from limner.nn import kernels
from limner.nn.norms import group_norm_act
x = torch.randn(2, 32, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
w, b = torch.ones(32, requires_grad=True), torch.zeros(32, requires_grad=True)
group_norm_act(x, w, b, 32).sum().backward()
print(kernels.available(), '|', kernels.status())
"""


def test_disabled_kernels_fall_back_to_the_pytorch_ops(tmp_path):
    env = {**os.environ, "LIMNER_KERNELS": "0", "LIMNER_KERNEL_DIR": str(tmp_path)}
    proc = _run_python(_PROBE, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("False | disabled")
    assert not list(tmp_path.iterdir())  # nothing compiled


def test_missing_compiler_falls_back_with_a_reason(tmp_path):
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "LIMNER_KERNEL_DIR": str(tmp_path / "k")}
    proc = _run_python(_PROBE, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("False | build failed"), proc.stdout
    assert "no-such-cc" in proc.stdout


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_kernel_builds_once_into_its_cache_dir(tmp_path):
    # one named build (choosing by timing is tests/models/test_kernel_variants.py's subject)
    env = {**os.environ, "LIMNER_KERNEL_DIR": str(tmp_path), "LIMNER_KERNEL_VARIANT": "vl8-r6"}
    for _ in range(2):
        proc = _run_python(_PROBE, env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("True | compiled"), proc.stdout
    built = [p.name for p in tmp_path.iterdir()]
    assert len(built) == 1 and built[0].startswith("limner_kernels-vl8-r6-") and built[0].endswith(".so")


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_a_killed_build_leaves_nothing_that_lasts(tmp_path):
    """Partial outputs of killed builds older than an hour are swept; fresh ones (a build in
    progress in another process) are left alone."""
    stale, fresh = tmp_path / ".limner_kernels-old.so.tmp", tmp_path / ".limner_kernels-new.so.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(stale, (0, 0))
    proc = _run_python(_PROBE, {**os.environ, "LIMNER_KERNEL_DIR": str(tmp_path), "LIMNER_KERNEL_VARIANT": "vl8-r6"})
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists() and fresh.exists()
