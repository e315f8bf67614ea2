"""Attention over feature-map pixels: self-attention and masked cross-attention to tokens.

Self-attention at low resolutions in a convolutional U-Net follows Ho et al. (2020,
https://arxiv.org/abs/2006.11239) and its multi-head form Dhariwal & Nichol (2021,
https://arxiv.org/abs/2105.05233); cross-attention from pixels to condition tokens follows
Rombach et al. (2022, latent diffusion, https://arxiv.org/abs/2112.10752). The output projections
start at zero, so a new block is the identity (Dhariwal & Nichol).

Projections of pixels are 1x1 convolutions: on channels-last tensors they are plain matrix
products run by oneDNN, which on the CPU is faster than ``nn.Linear``, and they need no reshape.
Attention itself, on the CPU:

- float32: limner's compiled kernel (:mod:`limner.nn.kernels`, ``attention.c``) reads q, k and v
  in place from the channels-last qkv map and writes the output in the layout the output
  projection reads, forward and backward (FlashAttention's recomputation of the probabilities,
  Dao et al. 2022, https://arxiv.org/abs/2205.14135, so nothing of size T x T is kept). For the
  8x8 maps of a small U-Net it is ~2x faster than ``F.scaled_dot_product_attention``, which runs
  these short sequences far below the CPU's matrix-product speed;
- bfloat16/float16: two batched matrix products and a float32 softmax, because SDPA's backward
  pass is ~10x slower there;
- otherwise (other devices, head widths not a multiple of 16, ``fast=False``, no compiler):
  ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from limner.nn import kernels
from limner.nn.conv import Conv2d
from limner.nn.norms import GroupNorm2d

__all__ = ["Attention2d", "TokenContext", "attention", "prepare_tokens"]


class TokenContext(NamedTuple):
    """Condition tokens prepared once per forward pass for every cross-attention block.

    Attributes:
        tokens: [B, T, D].
        attn_mask: [B, 1, 1, T] bool (True = attend) or None when every token is real. Rows with
            no real token attend to all their (padding) tokens so the softmax stays finite...
        keep: [B, 1, 1, 1] float, 0 for those rows: ...and their cross-attention branch is
            zeroed, so a sample without tokens is treated exactly as if no tokens were given.
    """

    tokens: Tensor
    attn_mask: Tensor | None
    keep: Tensor | None


def prepare_tokens(tokens: Tensor, mask: Tensor | None) -> TokenContext:
    """Build the masks for :class:`Attention2d` from tokens [B, T, D] and mask [B, T] (True = real)."""
    if mask is None:
        return TokenContext(tokens, None, None)
    mask = mask.to(device=tokens.device, dtype=torch.bool)
    has_any = mask.any(dim=1)  # [B]
    attn_mask = (mask | ~has_any[:, None])[:, None, None, :]  # [B, 1, 1, T]
    return TokenContext(tokens, attn_mask, has_any.to(tokens.dtype)[:, None, None, None])


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, fast: bool = True) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v for q [B, h, Tq, d], k, v [B, h, Tk, d], bool mask
    broadcastable to [B, h, Tq, Tk] (True = attend; every row needs one True).

    ``fast`` uses explicit matrix products for bfloat16/float16 on the CPU; otherwise, and
    with ``fast=False``, ``F.scaled_dot_product_attention``."""
    if not fast or q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # [B, h, Tq, Tk]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1, dtype=torch.float32).to(v.dtype) @ v


def _rows(x: Tensor) -> Tensor:
    """[B, C, H, W] → [B, H*W, C] (a view when x is channels-last)."""
    B, C, H, W = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, H * W, C)


def _unrows(o: Tensor, H: int, W: int) -> Tensor:
    """[B, H*W, C] → [B, C, H, W] in channels-last memory (a view of contiguous o)."""
    B, _, C = o.shape
    return o.view(B, H, W, C).permute(0, 3, 1, 2)


def _split(q_src: Tensor, kv_src: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v rows: slices of one [B, T, 3C] qkv tensor, or q [B, T, C] and kv [B, Tk, 2C]."""
    if kv_src is None:
        C = q_src.shape[2] // 3
        return q_src[..., :C], q_src[..., C:2 * C], q_src[..., 2 * C:]
    C = q_src.shape[2]
    return q_src, kv_src[..., :C], kv_src[..., C:]


class _KernelAttention(torch.autograd.Function):
    """Autograd for the compiled attention kernel over rows (:func:`_split`); saves its inputs,
    the output and the per-row log-sum-exp, and writes the gradients of q, k and v into one
    buffer per input (so the qkv projection gets its gradient without a concatenation)."""

    @staticmethod
    def forward(ctx: FunctionCtx, q_src: Tensor, kv_src: Tensor | None, heads: int,
                mask: Tensor | None) -> Tensor:
        o, lse = kernels.attention_forward(*_split(q_src, kv_src), heads, mask)
        ctx.save_for_backward(q_src, kv_src, o, lse, mask)
        ctx.heads = heads
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        q_src, kv_src, o, lse, mask = ctx.saved_tensors
        dq_src = torch.empty_like(q_src, memory_format=torch.contiguous_format)
        dkv_src = None if kv_src is None else torch.empty_like(kv_src, memory_format=torch.contiguous_format)
        kernels.attention_backward(*_split(q_src, kv_src), o, lse, grad, *_split(dq_src, dkv_src), ctx.heads, mask)
        return dq_src, dkv_src, None, None


def _kernel_attention(q_src: Tensor, kv_src: Tensor | None, heads: int, mask: Tensor | None = None) -> Tensor | None:
    """Attention over rows by the compiled kernel, or None when it does not apply (the caller
    then uses :func:`attention`)."""
    if mask is not None and (mask.dim() != 4 or mask.shape[1:3] != (1, 1)):
        return None  # the kernel takes a per-key mask only
    q, k, v = _split(q_src, kv_src)
    if not kernels.supports_attention(q, k, v, heads):
        return None
    needs_grad = torch.is_grad_enabled() and (q_src.requires_grad or (kv_src is not None and kv_src.requires_grad))
    if needs_grad:
        return _KernelAttention.apply(q_src, kv_src, heads, mask)
    return kernels.attention_forward(q, k, v, heads, mask, need_lse=False)[0]


def _heads(x: Tensor, heads: int) -> Tensor:
    """[B, C, H, W] → [B, heads, H*W, C/heads] (a view when x is channels-last)."""
    B, C, H, W = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, H * W, heads, C // heads).transpose(1, 2)


def _merge_heads(o: Tensor, H: int, W: int) -> Tensor:
    """[B, heads, H*W, d] → [B, heads*d, H, W] in channels-last memory."""
    B, heads, T, d = o.shape
    return o.transpose(1, 2).reshape(B, H, W, heads * d).permute(0, 3, 1, 2)


class Attention2d(nn.Module):
    """Multi-head self-attention over the H*W pixels, then optional cross-attention to tokens.

    Args:
        channels: C (a multiple of ``head_dim``).
        head_dim: width of one head; heads = C / head_dim.
        cross_dim: width D of the condition tokens, or 0 for no cross-attention.
        max_groups: group-norm groups (see :class:`GroupNorm2d`).
    """

    def __init__(self, channels: int, head_dim: int = 32, cross_dim: int = 0, max_groups: int = 32) -> None:
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"channels ({channels}) must be a multiple of head_dim ({head_dim})")
        self.heads = channels // head_dim
        self.fast = True  # False = F.scaled_dot_product_attention everywhere; runtime only
        self.norm = GroupNorm2d(channels, max_groups, act=False)
        self.qkv = Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(Conv2d(channels, channels, 1))
        self.cross_dim = cross_dim
        if cross_dim:
            self.cross_norm = GroupNorm2d(channels, max_groups, act=False)
            self.cross_q = Conv2d(channels, channels, 1)
            self.cross_kv = nn.Linear(cross_dim, 2 * channels)
            self.cross_proj = _zero(Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, context: TokenContext | None = None) -> Tensor:
        """x [B, C, H, W] → [B, C, H, W]; ``context`` is used only when built with cross_dim."""
        x = x + self.proj(self._self_attention(self.norm(x)))
        if self.cross_dim and context is not None:
            h = self.cross_proj(self._cross_attention(self.cross_norm(x), context))
            x = x + (h if context.keep is None else h * context.keep.to(h.dtype))
        return x

    def _self_attention(self, h: Tensor) -> Tensor:
        B, C, H, W = h.shape
        qkv = _rows(self.qkv(h))  # [B, T, 3C]
        if self.fast and (o := _kernel_attention(qkv, None, self.heads)) is not None:
            return _unrows(o, H, W)
        qkv = qkv.view(B, H * W, 3, self.heads, C // self.heads)  # B T 3 h d
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, T, d]
        return _merge_heads(attention(q, k, v, fast=self.fast), H, W)

    def _cross_attention(self, h: Tensor, context: TokenContext) -> Tensor:
        B, C, H, W = h.shape
        q = self.cross_q(h)
        kv = self.cross_kv(context.tokens)  # [B, T, 2C]
        if self.fast and (o := _kernel_attention(_rows(q), kv.to(q.dtype), self.heads, context.attn_mask)) is not None:
            return _unrows(o, H, W)
        q = _heads(q, self.heads)  # [B, heads, H*W, d]
        T = kv.shape[1]
        k, v = kv.view(B, T, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        o = attention(q, k.to(q.dtype), v.to(q.dtype), context.attn_mask, self.fast)
        return _merge_heads(o, H, W)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
