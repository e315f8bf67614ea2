"""EDM preconditioning: one denoiser contract around any backbone.

Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based Generative
Models" (NeurIPS 2022), Table 1 and Section 5. The backbone F_theta is wrapped so that

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F((c_in(sigma) x); c_noise(sigma))

with (eq. 7 and Table 1, "Ours" column):

    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out   = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

Every sampler in ``limner.samplers`` sees only ``D(x, sigma, cond) -> x0``; eps- or v-prediction
backbones would be other adapters with the same call, and samplers never branch on them.
(Written from the paper; EDM's reference code is under a non-commercial licence.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from limner.conditioning.base import CondInputs, Conditioning


class EDMPrecond(nn.Module):
    """The denoiser D(x, sigma, cond) of Karras et al. 2022 around a backbone and a condition
    encoder.

    Args:
        backbone: network F(x_in [B,C,H,W], c_noise [B], cond) -> [B,C,H,W] (e.g. ``UNet``).
        encoder: condition encoder (``limner.conditioning``); called inside ``forward`` when raw
            ``CondInputs`` are given, so a jointly trained text encoder is part of the module DDP
            wraps.
        sigma_data: standard deviation of the data (0.5 for images in [-1, 1]).
    """

    def __init__(self, backbone: nn.Module, encoder: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.sigma_data = sigma_data

    def forward(
        self,
        x: Tensor,
        sigma: Tensor,
        cond: Conditioning | CondInputs | None = None,
        drop: Tensor | None = None,
    ) -> Tensor:
        """D(x; sigma, cond) (EDM eq. 7). ``x`` [B,C,H,W]; ``sigma`` [B] or scalar; ``drop`` [B]
        bool marks rows whose condition is replaced by the null condition (CFG training)."""
        if isinstance(cond, CondInputs):
            cond = self.encoder(cond, drop)
        elif cond is None:
            cond = Conditioning.empty(x.shape[0])
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.log().flatten() / 4
        F_x = self.backbone((c_in * x).to(x.dtype), c_noise, cond)
        return c_skip * x.to(torch.float32) + c_out * F_x.to(torch.float32)
