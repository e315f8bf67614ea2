"""Autoregressive sampling of code indices in raster order, with a KV cache.

The transformer of VQGAN (Esser, Rombach, Ommer, "Taming Transformers for High-Resolution Image
Synthesis", CVPR 2021) and LlamaGen (Sun et al. 2024): one token per step, each drawn from the
softmax of the logits at temperature T after top-k (Fan et al. 2018) and top-p / nucleus
(Holtzman et al. 2020) filtering, with classifier-free guidance on the logits (LlamaGen,
Section 3.3): l_u + w (l_c - l_u), the negative prompt's logits taking the place of the
unconditional ones.

As for MaskGIT (``limner.samplers.maskgit``), each image's randomness is one unit-Gaussian draw
[N, K] from its own seed, used as Gumbel noise: token j is argmax(l_j / T + g_j) over the codes
the filters keep, which is a draw from the filtered, renormalised softmax. T = 0 is greedy.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from limner.samplers.maskgit import gumbel_from_normal

# (token inputs [B', n], start position, use_cache) -> logits [B', n, K]
StepFn = Callable[[Tensor, int], Tensor]


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Logits [B, K] with codes outside the top-k and outside the smallest set of probability
    mass >= top_p set to -inf (0 and 1.0 switch a filter off; the likeliest code always stays)."""
    out = logits.clone()
    K = out.shape[-1]
    if 0 < top_k < K:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, -torch.inf)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the codes ranked above
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, -torch.inf)
    return out


def pick(logits: Tensor, gumbel: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """Codes [B] from logits [B, K] and Gumbel noise [B, K] (see the module docstring)."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    filtered = filter_logits(logits.double() / temperature, top_k, top_p)
    return torch.argmax(filtered + gumbel, dim=-1)


def sample_autoregressive(
    step_fn: StepFn,
    noise: Tensor,
    *,
    start_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    cfg: float = 1.0,
    guided: bool = False,
    use_cache: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> Tensor:
    """Raster-order sampling. Returns code indices [B, N] int64.

    Args:
        step_fn: ``step_fn(inputs [B', n], start)`` -> logits [B', n, K] for input positions
            start..start+n-1. With ``use_cache`` the caller's KV cache holds everything before
            ``start`` and only the newest input is fed; without it, every input so far is fed
            from position 0 each step (the reference the cache is tested against).
        noise: unit-Gaussian [B, N, K], one draw per image.
        start_id: the start code fed at position 0.
        temperature, top_k, top_p: softmax temperature and filters.
        cfg, guided: guidance scale, and whether ``step_fn`` evaluates a cond/uncond pair
            (the inputs are then duplicated: cond rows then uncond rows).
        callback: after each token: ``step``, ``total``, ``tokens`` [B, step + 1].
    """
    B, N, _ = noise.shape
    gumbel = gumbel_from_normal(noise).to(noise.device)
    inputs = torch.full((B, 1), start_id, dtype=torch.long, device=noise.device)
    out = torch.empty(B, 0, dtype=torch.long, device=noise.device)
    for j in range(N):
        feed, start = (inputs[:, -1:], j) if use_cache else (inputs, 0)
        fed = torch.cat([feed, feed]) if guided else feed
        logits = step_fn(fed, start)[:, -1].double()  # [B', K]
        if guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + cfg * (cond - uncond)
        token = pick(logits, gumbel[:, j], temperature, top_k, top_p)
        out = torch.cat([out, token[:, None]], dim=1)
        inputs = torch.cat([inputs, token[:, None]], dim=1)
        if callback is not None:
            callback({"step": j, "total": N, "tokens": out})
    return out
