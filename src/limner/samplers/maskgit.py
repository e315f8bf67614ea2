"""MaskGIT's iterative parallel decoding and the token-sampling helpers both token families use.

Chang, Zhang, Jiang, Liu, Freeman, "MaskGIT: Masked Generative Image Transformer" (CVPR 2022),
Section 3.2: start with every token masked; at each of T steps predict all masked tokens at once,
sample each from its softmax, keep the most confident ones and re-mask the rest, so that after
step t a share cos(pi/2 * (t+1)/T) of the tokens is still masked (the cosine schedule, Section
3.3). Confidence is the sampled token's log-probability plus Gumbel noise scaled by a *choice
temperature* annealed linearly to 0 over the steps (the paper's released sampler), which keeps
early steps from committing to the same tokens for every seed.

Randomness is drawn once per image, before sampling: a unit-Gaussian tensor [N, K + 1] from the
image's own generator (``seeds[i]``), turned into Gumbel noise (the first K columns pick each
token by Gumbel-max, the last one perturbs its confidence). Image i therefore depends only on its
seed, whatever the batch, and ``limner interpolate`` can walk between two seeds by slerping the
Gaussian tensors. Inpainting (``known``) starts from the known tokens and unmasks only the rest.
Guidance (Ho & Salimans 2022) mixes the logits: l_u + w (l_c - l_u), the negative prompt's logits
taking the place of the unconditional ones.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

LogitsFn = Callable[[Tensor], Tensor]  # tokens [B, N] (with [MASK]) -> logits [B, N, K]


def gumbel_from_normal(z: Tensor) -> Tensor:
    """Standard Gumbel noise from unit-Gaussian z (same shape), through the normal CDF:
    -log(-log(Phi(z))), in float64 and clamped away from 0 and 1."""
    u = torch.special.ndtr(z.double()).clamp(1e-12, 1 - 1e-12)
    return -torch.log(-torch.log(u))


def cosine_mask_ratio(r: Tensor | float) -> Tensor | float:
    """MaskGIT's schedule gamma(r) = cos(pi/2 r): the share of tokens masked at progress r."""
    if isinstance(r, Tensor):
        return torch.cos(0.5 * math.pi * r)
    return math.cos(0.5 * math.pi * r)


def guided_logits(logits_fn: LogitsFn, tokens: Tensor, scale: float, guided: bool) -> Tensor:
    """Logits of ``tokens`` [B, N]; with guidance the model sees [tokens; tokens] (cond rows
    then uncond rows, as the caller's condition is built) and the two halves are mixed."""
    if not guided:
        return logits_fn(tokens)
    both = logits_fn(torch.cat([tokens, tokens]))
    cond, uncond = both.chunk(2)
    return uncond + scale * (cond - uncond)


def sample_maskgit(
    logits_fn: LogitsFn,
    noise: Tensor,
    *,
    mask_id: int,
    steps: int,
    temperature: float,
    cfg: float = 1.0,
    guided: bool = False,
    known: Tensor | None = None,
    known_mask: Tensor | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> Tensor:
    """MaskGIT decoding (Chang et al. 2022). Returns code indices [B, N] int64.

    Args:
        logits_fn: tokens [B', N] -> logits [B', N, K] (B' = 2B under guidance).
        noise: unit-Gaussian [B, N, K + 1], one draw per image (see the module docstring).
        mask_id: the ``[MASK]`` input code (K).
        steps: number of unmasking steps T.
        temperature: choice temperature, annealed linearly to 0 (4.5 in the paper).
        cfg, guided: guidance scale, and whether ``logits_fn`` evaluates a cond/uncond pair.
        known, known_mask: inpainting: tokens [B, N] and a bool mask [B, N], True where a token
            is kept; only the others are generated.
        callback: called after each step with ``step``, ``total``, ``tokens`` (current, with
            [MASK]) and ``predicted`` (every position filled with its current choice).
    """
    B, N, K1 = noise.shape
    K = K1 - 1
    gumbel = gumbel_from_normal(noise).to(noise.device)
    token_noise, conf_noise = gumbel[..., :K], gumbel[..., K]
    tokens = torch.full((B, N), mask_id, dtype=torch.long, device=noise.device)
    if known is not None:
        tokens = torch.where(known_mask, known.to(tokens.device), tokens)
    unknown = tokens == mask_id  # [B, N]
    total = unknown.sum(dim=1)  # tokens to generate per image
    for t in range(steps):
        logits = guided_logits(logits_fn, tokens, cfg, guided).double()  # [B, N, K]
        logp = torch.log_softmax(logits, dim=-1)
        choice = torch.argmax(logp + token_noise, dim=-1)  # Gumbel-max: a draw from softmax
        chosen_logp = logp.gather(-1, choice[..., None])[..., 0]
        still = tokens == mask_id
        predicted = torch.where(still, choice, tokens)
        progress = (t + 1) / steps
        # tokens left masked after this step: the cosine schedule, at least one fewer each step
        left = torch.floor(total.double() * cosine_mask_ratio(progress)).long()
        left = torch.minimum(left, still.sum(dim=1) - 1).clamp(min=0)
        confidence = chosen_logp + temperature * (1 - progress) * conf_noise
        confidence = confidence.masked_fill(~still, math.inf)  # decided tokens stay
        order = torch.argsort(confidence, dim=1, stable=True)  # least confident first
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(N, device=order.device).expand(B, N))
        remask = rank < left[:, None]
        tokens = torch.where(remask, torch.full_like(tokens, mask_id), predicted)
        if callback is not None:
            callback({"step": t, "total": steps, "tokens": tokens, "predicted": predicted})
    return tokens
