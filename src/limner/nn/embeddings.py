"""Noise-level embeddings: deterministic Fourier features of a scalar and the MLP after them.

Sinusoidal embeddings of the diffusion time or noise level follow Ho et al. (2020,
https://arxiv.org/abs/2006.11239), after the position encoding of Vaswani et al. (2017); the
Fourier-feature view and the log-sigma input are those of Tancik et al. (2020) and Karras et al.
(2022, EDM, https://arxiv.org/abs/2206.00364), where the network sees ``c_noise = log(sigma) / 4``.

The frequencies are computed, not stored: the embedding has no parameters or buffers, so a model's
``state_dict`` is the same whatever the frequency layout's implementation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FourierFeatures", "NoiseEmbedding"]


class FourierFeatures(nn.Module):
    """``[cos(2 pi f x), sin(2 pi f x)]`` for ``dim / 2`` log-spaced frequencies f.

    Args:
        dim: output width (even).
        min_freq, max_freq: frequency range in cycles per unit of input. The defaults suit
            ``c_noise = log(sigma) / 4``, which spans about [-1.6, 1.1] for sigma in [0.002, 80]:
            the slowest feature turns less than half a cycle over that span, the fastest one
            completes a cycle every 0.03 (a 13% change of sigma).
    """

    def __init__(self, dim: int, min_freq: float = 1 / 8, max_freq: float = 32.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"FourierFeatures needs an even width, got {dim}")
        self.dim, self.min_freq, self.max_freq = dim, min_freq, max_freq

    def forward(self, x: Tensor) -> Tensor:
        """x [B] float → [B, dim] float32."""
        half = self.dim // 2
        log_f = torch.linspace(math.log(self.min_freq), math.log(self.max_freq), half,
                               device=x.device, dtype=torch.float32)
        angle = x.to(torch.float32)[:, None] * (2 * math.pi * log_f.exp())  # [B, half]
        return torch.cat([angle.cos(), angle.sin()], dim=1)


class NoiseEmbedding(nn.Module):
    """Fourier features of the noise label followed by a two-layer SiLU MLP (Ho et al. 2020).

    Args:
        features: width of the Fourier features.
        dim: width of the embedding.
    """

    def __init__(self, features: int, dim: int) -> None:
        super().__init__()
        self.fourier = FourierFeatures(features)
        self.linear1 = nn.Linear(features, dim)
        self.linear2 = nn.Linear(dim, dim)

    def forward(self, noise_labels: Tensor) -> Tensor:
        """noise_labels [B] → [B, dim]."""
        return self.linear2(F.silu(self.linear1(self.fourier(noise_labels))))

    def extra_repr(self) -> str:
        return f"min_freq={self.fourier.min_freq}, max_freq={self.fourier.max_freq}"
