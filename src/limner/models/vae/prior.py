"""A Gaussian fitted to the aggregate posterior: what a KL VAE samples from instead of N(0, I).

A VAE trained with a small KL weight (beta << 1, needed for sharp reconstructions) leaves its
aggregate posterior q(z) = E_x q(z|x) far from the N(0, I) prior: decoding prior draws then
gives texture soup, and even z = 0 decodes to a grey box. Ex-post density estimation (Ghosh et
al. 2020, "From Variational to Deterministic Autoencoders", which fits a Gaussian or a mixture to
the latents of the training set after training; Dai & Wipf 2019, "Diagnosing and Enhancing VAE
Models", whose second stage learns that density) fixes the sampler without touching the
training objective.

Here the fit runs alongside training: every step folds the batch's posterior moments into an
exponential moving average (decay ``DECAY``, bias-corrected at the start), so the fitted
Gaussian follows the encoder as it changes and is stored with the weights (buffers of the
model, hence in safetensors and in the EMA copy). The covariance of q(z) is
Cov_x[mu(x)] + E_x[diag sigma^2(x)]. Sampling maps unit-Gaussian noise ``eps`` (one draw per
seed, as before) through z = mean + L eps with L the Cholesky factor of that covariance, so
seeds, temperature and interpolation keep their meaning. Latents wider than ``FULL_COV_MAX``
use a diagonal covariance (a full one would be too big to store).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

DECAY = 0.995
FULL_COV_MAX = 1024
JITTER = 1e-5

__all__ = ["FittedGaussianPrior"]


class FittedGaussianPrior(nn.Module):
    """Running Gaussian fit of q(z) over flattened latents of size ``dim``."""

    def __init__(self, dim: int, decay: float = DECAY):
        super().__init__()
        self.dim, self.decay, self.full = dim, decay, dim <= FULL_COV_MAX
        # float32 buffers (every device has them); the maths runs in float64
        self.register_buffer("updates", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("moment2", torch.zeros((dim, dim) if self.full else (dim,)))

    @property
    def fitted(self) -> bool:
        return bool(self.updates > 0)

    @torch.no_grad()
    def update(self, mu: Tensor, logvar: Tensor) -> None:
        """Fold a batch's posterior (mu, logvar [B, C, h, w]) into the running moments."""
        m = mu.detach().flatten(1).double()               # [B, D]
        var = logvar.detach().flatten(1).double().exp()   # [B, D]
        batch_mean = m.mean(0)
        if self.full:
            batch_m2 = m.T @ m / len(m) + torch.diag(var.mean(0))  # E[z z^T] of q(z)
        else:
            batch_m2 = (m * m).mean(0) + var.mean(0)
        w = max(1.0 - self.decay, 1.0 / (float(self.updates) + 1.0))  # bias correction at the start
        self.mean.copy_(self.mean.double().lerp(batch_mean, w))
        self.moment2.copy_(self.moment2.double().lerp(batch_m2, w))
        self.updates += 1

    def sample(self, eps: Tensor) -> Tensor:
        """Unit-Gaussian ``eps`` [B, C, h, w] -> latents of the fitted Gaussian (same shape)."""
        if not self.fitted:
            return eps
        mean, m2 = self.mean.double().cpu(), self.moment2.double().cpu()
        flat = eps.detach().flatten(1).double().cpu()
        if self.full:
            cov = m2 - torch.outer(mean, mean)
            cov = (cov + cov.T) / 2 + JITTER * torch.eye(self.dim, dtype=cov.dtype)
            z = mean + flat @ torch.linalg.cholesky(cov).T
        else:
            z = mean + flat * (m2 - mean**2).clamp_min(JITTER).sqrt()
        return z.to(eps.dtype).view_as(eps).to(eps.device)
