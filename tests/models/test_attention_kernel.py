"""The compiled attention kernel against float64 scaled dot-product attention, and its use in
:class:`limner.nn.Attention2d`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from limner.nn import Attention2d, kernels, prepare_tokens
from limner.nn.attention import _split

needs_kernel = pytest.mark.skipif(
    not kernels.available(), reason=f"compiled kernels unavailable: {kernels.status()}")


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _reference(q, k, v, heads, mask=None):
    """float64 SDPA over rows [B, T, C] → (o rows, (q, k, v) leaves for their gradients)."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]

    def split(t):
        B, T, C = t.shape
        return t.view(B, T, heads, C // heads).transpose(1, 2)

    o = F.scaled_dot_product_attention(*map(split, leaves), attn_mask=mask)
    B, h, T, d = o.shape
    return o.transpose(1, 2).reshape(B, T, h * d), leaves


def _operands(B, Tq, Tk, C, self_attention, g, scale=1.0):
    if self_attention:
        qkv = torch.randn(B, Tq, 3 * C, generator=g) * scale
        return qkv, None
    return torch.randn(B, Tq, C, generator=g) * scale, torch.randn(B, Tk, 2 * C, generator=g) * scale


CASES = [  # B, Tq, Tk, C, heads, self-attention, masked
    (8, 64, 64, 128, 4, True, False),  # an 8x8 map, heads of 32
    (3, 25, 25, 64, 1, True, False),  # 5x5: query blocks and key tiles with tails, one head of 64
    (2, 16, 16, 96, 2, True, False),  # heads of 48: a 32-wide and a 16-wide column tile
    (4, 36, 7, 64, 4, False, True),  # cross-attention to 7 tokens (heads of 16), some masked
    (2, 49, 77, 128, 4, False, True),  # 77 tokens: key tiles of 32, 32 and a padded 16
    (1, 256, 256, 32, 2, True, False),  # a 16x16 map, heads of 16
]


@needs_kernel
@pytest.mark.parametrize("B,Tq,Tk,C,heads,self_attention,masked", CASES)
def test_kernel_matches_float64_attention(B, Tq, Tk, C, heads, self_attention, masked):
    g = torch.Generator().manual_seed(B * Tq + Tk + C)
    q_src, kv_src = _operands(B, Tq, Tk, C, self_attention, g, scale=2.0)
    q, k, v = _split(q_src, kv_src)
    mask = None
    if masked:
        mask = torch.rand(B, 1, 1, Tk, generator=g) > 0.3
        mask[..., 0] = True  # every row attends to something
    o, lse = kernels.attention_forward(q, k, v, heads, mask)
    ref, leaves = _reference(q, k, v, heads, mask)
    assert o.shape == (B, Tq, C) and o.is_contiguous() and lse.shape == (B, heads, Tq)
    assert _rel(o, ref) < 2e-6
    go = torch.randn(B, Tq, C, generator=g)
    ref.backward(go.double())
    dq_src = torch.full_like(q_src, float("nan"))  # every element must be written
    dkv_src = None if kv_src is None else torch.full_like(kv_src, float("nan"))
    kernels.attention_backward(q, k, v, o, lse, go, *_split(dq_src, dkv_src), heads, mask)
    for got, leaf in zip(_split(dq_src, dkv_src), leaves):
        assert _rel(got, leaf.grad) < 1e-5
    if masked:  # masked keys get exactly zero gradient
        dk, dv = _split(dq_src, dkv_src)[1:]
        dropped = ~mask[:, 0, 0, :]
        assert dk[dropped].abs().max() == 0 and dv[dropped].abs().max() == 0


@needs_kernel
def test_kernel_is_stable_for_large_scores():
    """Scores in the hundreds (softmax close to one-hot) stay finite, and the error is that of
    float32 scores: no worse than float32 SDPA's."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 40, 3 * 64, generator=g) * 12
    q, k, v = _split(qkv, None)
    o, lse = kernels.attention_forward(q, k, v, 2)
    ref, _ = _reference(q, k, v, 2)
    heads32 = [t.reshape(2, 40, 2, 32).transpose(1, 2) for t in (q, k, v)]
    sdpa = F.scaled_dot_product_attention(*heads32).transpose(1, 2).reshape(2, 40, 64)
    assert torch.isfinite(o).all() and torch.isfinite(lse).all()
    assert _rel(o, ref) < 2 * max(_rel(sdpa, ref), 1e-6)


@needs_kernel
def test_kernel_results_do_not_depend_on_the_thread_count():
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(6, 64, 3 * 64, generator=g)
    go = torch.randn(6, 64, 64, generator=g)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            q, k, v = _split(qkv, None)
            o, lse = kernels.attention_forward(q, k, v, 2)
            d = torch.empty_like(qkv)
            kernels.attention_backward(q, k, v, o, lse, go, *_split(d, None), 2)
            results.append((o, d))
    finally:
        torch.set_num_threads(before)
    for o, d in results[1:]:
        assert torch.equal(o, results[0][0]) and torch.equal(d, results[0][1])


def test_supports_attention_only_where_the_kernel_applies():
    qkv = torch.randn(2, 16, 3 * 64)
    q, k, v = _split(qkv, None)
    assert kernels.supports_attention(q, k, v, 2) == kernels.available()
    assert not kernels.supports_attention(q, k, v, 8)  # heads of 8: not a multiple of 16
    assert not kernels.supports_attention(*(t.double() for t in (q, k, v)), 2)
    assert not kernels.supports_attention(*(t.bfloat16() for t in (q, k, v)), 2)
    strided = torch.randn(2, 16, 128)[..., ::2]  # last dimension not dense
    assert not kernels.supports_attention(strided, k, v, 2)
    assert not kernels.supports_attention(q, k[:, :8], v, 2)  # k and v disagree
    assert not kernels.supports_attention(q[:, :0], k, v, 2)  # no queries


def _module_pair(cross_dim):
    torch.manual_seed(0)
    block = Attention2d(128, head_dim=32, cross_dim=cross_dim)
    for p in block.parameters():  # the zero-initialised projections would hide the attention
        torch.nn.init.normal_(p, std=0.1)
    return block


@needs_kernel
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_attention_block_with_the_kernel_matches_sdpa(layout):
    """Attention2d (self- and masked cross-attention, one sample without tokens) computes the same
    outputs and gradients with the kernel as with F.scaled_dot_product_attention."""
    block = _module_pair(cross_dim=48)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 128, 6, 6, generator=g).contiguous(memory_format=layout)
    tokens = torch.randn(4, 9, 48, generator=g)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2] = False  # no real token: the cross-attention branch is dropped for this sample
    context = prepare_tokens(tokens, mask)
    go = torch.randn(4, 128, 6, 6, generator=g)
    results = []
    for fast in (True, False):
        block.fast = fast
        block.zero_grad()
        xi = x.clone().requires_grad_()
        y = block(xi, context)
        y.backward(go)
        results.append((y.detach(), xi.grad, [p.grad.clone() for p in block.parameters()]))
    (y1, gx1, gp1), (y2, gx2, gp2) = results
    assert _rel(y1, y2) < 1e-5 and _rel(gx1, gx2) < 1e-5
    for a, b in zip(gp1, gp2):
        assert _rel(a, b) < 1e-4
    with torch.inference_mode():
        block.fast = True
        assert _rel(block(x, context), y2) < 1e-5


@needs_kernel
def test_attention_block_uses_the_kernel_for_float32_on_the_cpu(monkeypatch):
    calls = []
    real = kernels.attention_forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("need_lse", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "attention_forward", spy)
    block = _module_pair(cross_dim=0)
    x = torch.randn(2, 128, 4, 4).contiguous(memory_format=torch.channels_last)
    block(x.requires_grad_()).sum().backward()
    with torch.no_grad():
        block(x)
    assert calls == [True, False]  # with gradients: keeps the log-sum-exp; without: does not
    block.fast = False
    block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        block.fast = True
        block(x)
    assert len(calls) == 2
