"""The EDM training loss (Karras et al. 2022, Section 5, eq. 2 and 8, Table 1 "Ours").

Noise levels are drawn log-normally, ln(sigma) ~ N(P_mean, P_std^2), and the squared error of
the denoiser is weighted by lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, which
makes the effective target of the backbone unit-variance at every noise level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from limner.conditioning.base import CondInputs


@dataclass
class EDMLoss:
    """Per-sample EDM loss: (net, images, condition) -> [B] weighted squared error.

    Args:
        P_mean, P_std: location and scale of ln(sigma) during training (EDM: -1.2, 1.2).
        sigma_data: data standard deviation used by the weighting (matches the precond).
    """

    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5

    def __call__(
        self,
        net: nn.Module,
        images: Tensor,
        cond: CondInputs | None,
        drop: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        B = images.shape[0]
        rnd_normal = torch.randn(B, device=images.device, generator=generator)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        n = torch.randn(images.shape, device=images.device, generator=generator)
        D_yn = net(images + n * sigma.reshape(-1, 1, 1, 1), sigma, cond, drop)
        return weight * ((D_yn - images) ** 2).flatten(1).mean(1)
