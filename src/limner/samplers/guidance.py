"""Classifier-free guidance around any denoiser.

Ho & Salimans 2022, "Classifier-Free Diffusion Guidance" (arXiv 2207.12598), eq. 6 written for a
denoiser instead of eps (the two are affine in each other at a fixed sigma, so the form holds):

    D_w(x; sigma, c) = D(x; sigma, c_u) + w (D(x; sigma, c) - D(x; sigma, c_u))

where c_u is the null condition, or a negative prompt's condition. Wrapping the denoiser once
gives guidance and negative prompts to every sampler without any sampler knowing about them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from limner.conditioning.base import Conditioning
from limner.samplers.base import Denoiser, SamplerError


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022) around any denoiser: D = D_u + w (D_c - D_u).

    The cond and uncond halves go through the network as one batch (``Conditioning.cat``). With
    w == 1 only the cond batch is evaluated, with w == 0 only the uncond batch.

    Args:
        denoiser: D(x [B, C, H, W], sigma [B], cond) -> x0 estimate.
        uncond: the null condition or the negative prompt's condition, for B rows or for 1 row
            (then shared by every row).
        scale: the guidance scale w ("cfg"): 1 = no guidance, 0 = unconditional, > 1 = stronger.
    """

    def __init__(self, denoiser: Denoiser, uncond: Conditioning, scale: float):
        self.denoiser = denoiser
        self.uncond = uncond
        self.scale = float(scale)

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        """Guided x0 estimate [B, C, H, W] for x [B, C, H, W] at sigma [B] under ``cond``."""
        w = self.scale
        if w == 1.0:
            return self.denoiser(x, sigma, cond)
        uncond = self._uncond_for(x.shape[0])
        if w == 0.0:
            return self.denoiser(x, sigma, uncond)
        # [2B, C, H, W]: cond rows first, then uncond rows
        both = self.denoiser(
            torch.cat([x, x]), torch.cat([sigma, sigma]), Conditioning.cat([cond, uncond])
        )
        D_c, D_u = both.chunk(2)
        return D_u + w * (D_c - D_u)

    def _uncond_for(self, B: int) -> Conditioning:
        if self.uncond.batch_size == B:
            return self.uncond
        if self.uncond.batch_size == 1:
            return self.uncond.repeat(B)
        raise SamplerError(f"uncond condition has {self.uncond.batch_size} rows for a batch of {B}")
