"""Group normalisation fused with SiLU, a per-sample affine map and a per-sample channel shift.

GroupNorm (Wu & He, 2018, https://arxiv.org/abs/1803.08494) followed by SiLU is the
pre-activation of every residual block in the diffusion U-Nets of Ho et al. (2020,
https://arxiv.org/abs/2006.11239) and Dhariwal & Nichol (2021, https://arxiv.org/abs/2105.05233).

Why not ``F.group_norm`` + ``F.silu``: on the CPU, PyTorch's native group-norm backward is slow
for channels-last tensors (and very slow in bfloat16), and the pair keeps three full-size tensors
for the backward pass (input, normalised output, activation). :func:`group_norm_act` computes the
same function from per-channel moments, which are cheap reductions over H and W in any memory
format; it applies the norm as one per-(sample, channel) affine map ``x * a + b`` and recomputes
that map in the backward pass, so it keeps only its input. ``weight`` and ``bias`` may be per
sample ([B, C]): that is the adaptive group norm ``GroupNorm(x) * (1 + scale) + shift`` of
Dhariwal & Nichol (2021) with the embedding's scale and shift folded into the affine
parameters by the caller (cheap [B, C] ops under ordinary autograd). The optional ``shift``
[B, C] is instead added to the input before normalising: the ``h + emb`` of Ho et al., kept for
runs made with that block (the norm erases it where a group holds a single channel).

:func:`group_norm_act` uses the fused steps only where they are faster (:func:`prefers_fused`:
large float32 maps and channels-last low-precision maps on the CPU) and the native kernels
elsewhere. Float32 channels-last maps on the CPU go to the compiled two-pass kernel of
:mod:`limner.nn.kernels` when it could be built (about 2x faster than the fused PyTorch steps,
forward and backward), with the steps above as its fallback; bfloat16 NCHW maps (training and
sampling under bfloat16 autocast) go to its one-pass-per-group forward and backward, which
compute in float and round each output once, and bfloat16 channels-last maps to its two-pass
forward and backward (the same rounding). The fused paths are first-order
only (no double backward); ``fast=False`` always selects the reference implementation, which
also serves as the test oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from limner.nn import kernels

__all__ = ["GroupNorm2d", "fused_group_norm_act", "group_norm_act", "num_groups", "prefers_fused"]


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= ``max_groups`` that divides ``channels``."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def _affine_coefficients(
    x: Tensor, weight: Tensor, bias: Tensor, shift: Tensor | None, groups: int, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-(sample, channel) ``a``, ``b`` [B, C] with ``GroupNorm(x + shift) == x * a + b``
    (weight and bias [C] or per sample [B, C]).

    Also returns what the backward pass needs: the channel means ``m1`` [B, C] of x,
    ``d = shift - mu`` [B, G, C/G] (or [B, G, 1] without shift) and ``rstd`` [B, G, 1]. Statistics
    are float32 (float64 for float64 input) whatever the input dtype.
    """
    B, C = x.shape[:2]
    n = C // groups
    stat = torch.promote_types(x.dtype, torch.float32)
    m1 = x.mean((2, 3), dtype=stat)  # [B, C]; torch.var_mean is ~100x slower on channels-last
    m2 = (x * x).mean((2, 3), dtype=stat)
    e = None if shift is None else shift.to(stat)
    if e is not None:
        m2 = torch.addcmul(m2, e, 2 * m1 + e)  # E[(x + e)^2]
    shifted = (m1 if e is None else m1 + e).view(B, groups, n)
    mu = shifted.mean(2, keepdim=True)  # [B, G, 1]
    rstd = (m2.view(B, groups, n).mean(2, keepdim=True) - mu * mu).clamp_min_(0).add_(eps).rsqrt_()
    a = rstd * weight.to(stat).view(-1, groups, n)  # [B, G, n]
    d = -mu if e is None else e.view(B, groups, n) - mu
    b = torch.addcmul(bias.to(stat).view(-1, groups, n), d, a)
    return a.view(B, C), b.view(B, C), m1, d, rstd


def _apply_affine(x: Tensor, a: Tensor, b: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``x * a + b`` with a, b [B, C] broadcast over H, W; the result keeps x's memory format."""
    a4, b4 = a[:, :, None, None], b[:, :, None, None]
    if out_dtype == x.dtype:
        return torch.addcmul(b4.to(x.dtype), x, a4.to(x.dtype))
    out = torch.empty_like(x, dtype=out_dtype)
    return torch.addcmul(b4, x, a4, out=out)


def _forward(
    x: Tensor, weight: Tensor, bias: Tensor, shift: Tensor | None,
    groups: int, eps: float, act: bool, out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, tuple[Tensor | None, ...]]:
    """(output, the tensor the backward pass reads, coefficients for the backward pass)."""
    if x.dtype in _LOW_PRECISION:
        return _forward_native_stats(x, weight, bias, shift, groups, eps, act, out_dtype)
    a, b, m1, d, rstd = _affine_coefficients(x, weight, bias, shift, groups, eps)
    z = _apply_affine(x, a, b, out_dtype)
    return (F.silu(z, inplace=True) if act else z), x, (a, b, m1, d, rstd)


def _forward_native_stats(
    x: Tensor, weight: Tensor, bias: Tensor, shift: Tensor | None,
    groups: int, eps: float, act: bool, out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, tuple[Tensor | None, ...]]:
    """Low-precision x: the native forward kernel gives float32 statistics without a float32 copy
    of x (which is what makes the reductions of :func:`_affine_coefficients` slow here)."""
    B, C, H, W = x.shape
    xe = x if shift is None else x + shift[:, :, None, None].to(x.dtype)
    per_sample = weight.dim() == 2
    w = None if per_sample else weight.float()
    z, mu, rstd = torch.ops.aten.native_group_norm(xe, w, None if per_sample else bias.float(), B, C, H * W, groups, eps)
    mu, rstd = mu[:, :, None], rstd[:, :, None]  # [B, G, 1]
    a = (rstd * weight.float().view(-1, groups, C // groups)).view(B, C)
    b = torch.addcmul(bias.float().view(-1, groups, C // groups), -mu, a.view(B, groups, -1)).view(B, C)
    if per_sample:  # the kernel normalised without the affine map: apply it to x in one pass
        z = _apply_affine(xe, a, b, xe.dtype)
    y = F.silu(z, inplace=True) if act else z
    return y.to(out_dtype), xe, (a, b, None, -mu, rstd)


def _use_kernel(x: Tensor, weight: Tensor, bias: Tensor, shift: Tensor | None, groups: int,
                out_dtype: torch.dtype) -> bool:
    """Whether the compiled kernel of :mod:`limner.nn.kernels` computes this call (float32
    channels-last, or bfloat16 NCHW with a bfloat16 result), forward and backward."""
    return (shift is None and out_dtype == x.dtype and bias.shape == weight.shape
            and bias.dtype == torch.float32 and kernels.supports(x, weight, groups))


def _use_bf16_inference_kernel(x: Tensor, weight: Tensor, bias: Tensor, shift: Tensor | None, groups: int,
                               out_dtype: torch.dtype) -> bool:
    """Whether the compiled bfloat16 NCHW forward computes this call (no gradient needed)."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias))
    return (not needs_grad and shift is None and out_dtype == torch.bfloat16 and bias.shape == weight.shape
            and kernels.supports_bf16_inference(x, weight, groups))


class _GroupNormAct(torch.autograd.Function):
    """Autograd for :func:`group_norm_act`; saves x and the small coefficient tensors only."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor, shift: Tensor | None,
                groups: int, eps: float, act: bool, out_dtype: torch.dtype) -> Tensor:
        y, saved, coeffs = _forward(x, weight, bias, shift, groups, eps, act, out_dtype)
        ctx.save_for_backward(saved, weight, *coeffs)
        ctx.groups, ctx.act, ctx.has_shift, ctx.out_dtype = groups, act, shift is not None, out_dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, a, b, m1, d, rstd = ctx.saved_tensors
        gz = grad
        if ctx.act:  # recompute the pre-activation instead of having stored it
            gz = torch.ops.aten.silu_backward(grad, _apply_affine(x, a, b, ctx.out_dtype))
        gx, gweight, gbias, gshift = _backward(x, gz, weight, a, m1, d, rstd, ctx.groups, ctx.has_shift)
        return gx, gweight, gbias, gshift, None, None, None, None


class _KernelGroupNormAct(torch.autograd.Function):
    """Autograd for the compiled kernel (:mod:`limner.nn.kernels`); saves x and [B, C] / [B, G]
    coefficients only, like :class:`_GroupNormAct`."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float,
                act: bool) -> Tensor:
        y, a, b, mean, rstd = kernels.group_norm_act_forward(x, weight, bias, groups, eps, act)
        ctx.save_for_backward(x, weight, a, b, mean, rstd)
        ctx.groups, ctx.act = groups, act
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, a, b, mean, rstd = ctx.saved_tensors
        gx, gw, gb = kernels.group_norm_act_backward(x, grad, weight, a, b, mean, rstd, ctx.groups, ctx.act)
        if weight.dim() == 1:
            gw, gb = gw.sum(0), gb.sum(0)
        return gx, gw, gb, None, None, None


def _backward(
    x: Tensor, gz: Tensor, weight: Tensor, a: Tensor, m1: Tensor | None, d: Tensor, rstd: Tensor,
    groups: int, with_shift: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients of ``z = GroupNorm(x + shift)`` given g = dL/dz, from per-channel sums (gamma
    and its gradients per sample when ``weight`` is [B, C]).

    With S1 = sum_hw g and S2 = sum_hw g * x per (sample, channel) and N elements per group,
    dL/dx = a * g + p * x + q where p = -rstd^2 * B_g, q = p * (shift - mu) - rstd * A_g,
    A_g = sum_group(gamma * S1) / N and B_g = sum_group(gamma * rstd * (S2 + d * S1)) / N;
    dL/dshift = sum_hw dL/dx.
    """
    B, C, H, W = x.shape
    n, stat = C // groups, a.dtype
    s1 = _channel_sums(gz, stat).view(B, groups, n)
    s2 = _channel_sums(gz * x, stat).view(B, groups, n)
    g_xhat = torch.addcmul(s2, d, s1).mul_(rstd)  # [B, G, n]: sum_hw g * xhat
    gamma = weight.to(stat).view(-1, groups, n)  # [1 or B, G, n]
    A = (gamma * s1).sum(2, keepdim=True)  # [B, G, 1], times N
    p = (gamma * g_xhat).sum(2, keepdim=True).mul_(rstd * rstd / (-n * H * W))  # [B, G, 1]
    q = torch.addcmul(p * d, rstd, A, value=-1.0 / (n * H * W))  # [B, G, n] or [B, G, 1]
    p_c, q_c = p.expand(B, groups, n).reshape(B, C), q.expand(B, groups, n).reshape(B, C)
    gx = _apply_affine(x, p_c, q_c, x.dtype)
    gx.addcmul_(gz, a[:, :, None, None].to(gx.dtype))
    gshift = None
    if with_shift and m1 is None:  # x already includes the shift: dL/dshift = sum_hw dL/dx
        gshift = _channel_sums(gx, stat)
    elif with_shift:  # sum_hw (a g + p x + q) per channel
        gshift = torch.addcmul(q_c, p_c, m1).mul_(H * W).addcmul_(a, s1.view(B, C))
    if weight.dim() == 2:  # per-sample affine parameters get per-sample gradients
        return gx, g_xhat.view(B, C).to(weight.dtype), s1.view(B, C).to(weight.dtype), gshift
    return gx, g_xhat.sum(0).view(C).to(weight.dtype), s1.sum(0).view(C).to(weight.dtype), gshift


def _channel_sums(t: Tensor, stat: torch.dtype) -> Tensor:
    """[B, C, H, W] → [B, C] sums in ``stat``. Low-precision tensors are summed with float32
    accumulation and one rounding (asking for a float32 result makes a float32 copy first)."""
    if t.dtype in _LOW_PRECISION:
        return t.sum((2, 3)).to(stat)
    return t.sum((2, 3), dtype=stat)


def group_norm_act(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    groups: int,
    shift: Tensor | None = None,
    eps: float = 1e-5,
    act: bool = True,
    fast: bool = True,
) -> Tensor:
    """``SiLU(GroupNorm(x + shift))`` (or without SiLU when ``act=False``).

    Args:
        x: [B, C, H, W], any memory format.
        weight, bias: affine parameters of the norm, [C] or per sample [B, C].
        groups: number of channel groups; must divide C.
        shift: optional [B, C] added to every pixel of x before normalising.
        eps: added to the group variance.
        act: apply SiLU after the norm.
        fast: pick the faster implementation for this input (see :func:`prefers_fused`);
            False always runs the reference ops (``F.group_norm`` and ``F.silu``).
    Returns [B, C, H, W] in x's memory format; under CPU/CUDA autocast its dtype is the
    autocast dtype (its consumer is a convolution that would cast it anyway).
    """
    out_dtype = _output_dtype(x)
    if fast and _use_bf16_inference_kernel(x, weight, bias, shift, groups, out_dtype):
        return kernels.group_norm_act_forward_bf16(x, weight, bias, groups, eps, act)
    if fast and _use_kernel(x, weight, bias, shift, groups, out_dtype):
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
            return _KernelGroupNormAct.apply(x, weight, bias, groups, eps, act)
        return kernels.group_norm_act_forward(x, weight, bias, groups, eps, act)[0]
    if fast and prefers_fused(x):
        return fused_group_norm_act(x, weight, bias, groups, shift, eps, act)
    h = x if shift is None else x + shift[:, :, None, None].to(x.dtype)
    if weight.dim() == 2:
        h = F.group_norm(h, groups, None, None, eps)
        h = torch.addcmul(bias.to(h.dtype)[:, :, None, None], h, weight.to(h.dtype)[:, :, None, None])
    else:
        h = F.group_norm(h, groups, weight.to(h.dtype), bias.to(h.dtype), eps)
    if act:  # in place when autograd does not need the pre-activation
        h = F.silu(h, inplace=not (torch.is_grad_enabled() and h.requires_grad))
    return h.to(out_dtype)


def prefers_fused(x: Tensor) -> bool:
    """Whether :func:`fused_group_norm_act` beats the native ops for x (measured on a 2-core CPU).

    Native kernels win on GPUs and on small maps (fewer, larger kernels); the fused steps win
    on float32 maps of 16x16 and more, and on every channels-last bfloat16/float16 map, whose
    native backward is very slow. Contiguous (NCHW) low-precision maps are fastest natively.
    """
    if x.device.type != "cpu":
        return False
    if x.dtype in (torch.float32, torch.float64):
        return x.shape[2] * x.shape[3] >= 256
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def fused_group_norm_act(
    x: Tensor, weight: Tensor, bias: Tensor, groups: int,
    shift: Tensor | None = None, eps: float = 1e-5, act: bool = True,
) -> Tensor:
    """:func:`group_norm_act` by the fused steps of this module, whatever the input."""
    out_dtype = _output_dtype(x)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, shift)):
        return _GroupNormAct.apply(x, weight, bias, shift, groups, eps, act, out_dtype)
    return _forward(x, weight, bias, shift, groups, eps, act, out_dtype)[0]


def _output_dtype(x: Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class GroupNorm2d(nn.Module):
    """GroupNorm over [B, C, H, W] with an optional fused SiLU and per-sample channel shift.

    Args:
        channels: C.
        max_groups: upper bound on the group count (the largest divisor of C not above it is used).
        act: apply SiLU after the norm.
        eps: added to the group variance.
    The parameters are ``weight`` and ``bias`` [C], as in ``nn.GroupNorm``.
    """

    def __init__(self, channels: int, max_groups: int = 32, act: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups = num_groups(channels, max_groups)
        self.act = act
        self.eps = eps
        self.fast = True  # False = reference ops only (e.g. for double backward); not saved
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, shift: Tensor | None = None) -> Tensor:
        """Norm (+ SiLU) of ``x + shift``; shift [B, C] is optional (the pre-norm embedding add)."""
        return group_norm_act(x, self.weight, self.bias, self.groups, shift, self.eps, self.act, self.fast)

    def modulated(self, x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """Adaptive group norm: ``GroupNorm(x) * (1 + scale) + shift`` (+ SiLU), scale and shift
        [B, C] (Dhariwal & Nichol 2021), through per-sample affine parameters."""
        scale1 = scale.to(self.weight.dtype) + 1
        weight = self.weight * scale1
        bias = torch.addcmul(shift.to(self.bias.dtype), self.bias, scale1)
        return group_norm_act(x, weight, bias, self.groups, None, self.eps, self.act, self.fast)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, groups={self.groups}, act={self.act}, eps={self.eps}"
