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

A class-conditional VAE gets one Gaussian per class plus one over all the data (slot
``classes``, used for unlabelled requests): a CVAE's latent still carries the class (its decoder
reads the label, but nothing stops z from encoding it too), so one Gaussian over every class
makes the decoder receive latents of one class with the label of another.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

DECAY = 0.995
FULL_COV_MAX = 1024
JITTER = 1e-5

__all__ = ["FittedGaussianPrior"]


class FittedGaussianPrior(nn.Module):
    """Running Gaussian fits of q(z) over flattened latents of size ``dim``: one per class
    (``classes`` > 0) and one over all the data (the last slot)."""

    def __init__(self, dim: int, decay: float = DECAY, classes: int = 0):
        super().__init__()
        self.dim, self.decay, self.full, self.classes = dim, decay, dim <= FULL_COV_MAX, classes
        slots = classes + 1
        # float32 buffers (every device has them); the maths runs in float64
        self.register_buffer("updates", torch.zeros(slots))
        self.register_buffer("mean", torch.zeros(slots, dim))
        self.register_buffer("moment2", torch.zeros((slots, dim, dim) if self.full else (slots, dim)))

    @property
    def fitted(self) -> bool:
        return bool(self.updates[-1] > 0)

    @torch.no_grad()
    def update(self, mu: Tensor, logvar: Tensor, labels: Tensor | None = None) -> None:
        """Fold a batch's posterior (mu, logvar [B, C, h, w]; class ids [B]) into the moments."""
        m = mu.detach().flatten(1).double().cpu()               # [B, D]
        var = logvar.detach().flatten(1).double().exp().cpu()   # [B, D]
        self._update_slot(self.classes, m, var)
        if self.classes and labels is not None:
            labels = labels.cpu()
            for k in labels.unique().tolist():
                rows = labels == k
                self._update_slot(int(k), m[rows], var[rows])

    def _update_slot(self, slot: int, m: Tensor, var: Tensor) -> None:
        batch_mean = m.mean(0)
        if self.full:
            batch_m2 = m.T @ m / len(m) + torch.diag(var.mean(0))  # E[z z^T] of q(z)
        else:
            batch_m2 = (m * m).mean(0) + var.mean(0)
        w = max(1.0 - self.decay, 1.0 / (float(self.updates[slot]) + 1.0))  # bias correction at the start
        dev = self.mean.device
        self.mean[slot] = self.mean[slot].double().lerp(batch_mean.to(dev), w).float()
        self.moment2[slot] = self.moment2[slot].double().lerp(batch_m2.to(dev), w).float()
        self.updates[slot] += 1

    def sample(self, eps: Tensor, labels: Sequence[int] | None = None) -> Tensor:
        """Unit-Gaussian ``eps`` [B, C, h, w] -> latents of the fitted Gaussian of each row's
        class (the all-data one for rows without a label or of a class never seen)."""
        if not self.fitted:
            return eps
        flat = eps.detach().flatten(1).double().cpu()
        slots = torch.tensor([self._slot(labels[i] if labels is not None else None) for i in range(len(flat))])
        z = torch.empty_like(flat)
        for slot in slots.unique().tolist():  # one factorisation per Gaussian, not per row
            rows = slots == slot
            z[rows] = self._draw(int(slot), flat[rows])
        return z.to(eps.dtype).view_as(eps).to(eps.device)

    def _slot(self, label: int | None) -> int:
        if label is None or not 0 <= int(label) < self.classes or self.updates[int(label)] == 0:
            return self.classes
        return int(label)

    def _draw(self, slot: int, eps: Tensor) -> Tensor:
        """Rows of unit-Gaussian ``eps`` [n, D] -> draws of Gaussian ``slot``, float64 [n, D]."""
        mean, m2 = self.mean[slot].double().cpu(), self.moment2[slot].double().cpu()
        if self.full:
            cov = m2 - torch.outer(mean, mean)
            cov = (cov + cov.T) / 2 + JITTER * torch.eye(self.dim, dtype=cov.dtype)
            return mean + eps @ torch.linalg.cholesky(cov).T
        return mean + eps * (m2 - mean**2).clamp_min(JITTER).sqrt()
