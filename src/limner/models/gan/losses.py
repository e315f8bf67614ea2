"""GAN losses on discriminator logits: the logistic (non-saturating) loss and the R1 penalty.

Sources:
- Goodfellow et al. 2014, "Generative Adversarial Nets" (https://arxiv.org/abs/1406.2661):
  the minimax value ``E log sigmoid(D(x)) + E log(1 - sigmoid(D(G(z))))`` (eq. 1), and the
  non-saturating generator objective ``max E log sigmoid(D(G(z)))`` (§3). With logits,
  ``-log sigmoid(t) = softplus(-t)`` and ``-log(1 - sigmoid(t)) = softplus(t)``.
- Mescheder, Geiger & Nowozin 2018, "Which Training Methods for GANs do actually Converge?"
  (https://arxiv.org/abs/1801.04406, eq. 9): ``R1 = gamma/2 E_real ||grad_x D(x)||^2``.
- Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2, §3.1):
  lazy regularisation, R1 every k steps with its weight multiplied by k.
- Mao et al. 2019, "Mode Seeking Generative Adversarial Networks for Diverse Image Synthesis"
  (MSGAN, https://arxiv.org/abs/1903.05628, eq. 3): for two latents under one condition, the
  generator maximises ``d(G(c, z1), G(c, z2)) / d(z1, z2)``, minimised as its reciprocal; the
  cure for a conditional generator that ignores z.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class LogisticLoss:
    """The logistic GAN loss with the non-saturating generator objective (Goodfellow 2014)."""

    @staticmethod
    def discriminator(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """Per-sample D loss ``softplus(-D(x)) + softplus(D(G(z)))``; logits [B] -> [B]."""
        return F.softplus(-real_logits) + F.softplus(fake_logits)

    @staticmethod
    def generator(fake_logits: Tensor) -> Tensor:
        """Per-sample non-saturating G loss ``softplus(-D(G(z)))``; logits [B] -> [B]."""
        return F.softplus(-fake_logits)


class R1Penalty:
    """R1 gradient penalty on real images, applied lazily (Mescheder 2018; StyleGAN2 §3.1).

    Args:
        gamma: R1 weight; the loss term is ``gamma/2 * ||grad||^2``.
        interval: steps between evaluations; the term is multiplied by it to keep its average
            strength (0 gamma disables the penalty).
    """

    def __init__(self, gamma: float, interval: int = 1) -> None:
        self.gamma, self.interval = float(gamma), int(interval)

    def due(self, step: int) -> bool:
        """Whether step ``step`` (steps completed before it) evaluates the penalty."""
        return self.gamma > 0 and step % self.interval == 0

    @property
    def weight(self) -> float:
        """Multiplier of the mean squared gradient norm in the D loss: gamma/2 * interval."""
        return self.gamma / 2 * self.interval

    def __call__(self, real_logits: Tensor, real_images: Tensor) -> Tensor:
        """Squared gradient norm ``||grad_x sum_b D(x_b)||^2`` per image, [B], kept in the graph
        (create_graph) so the penalty trains D.

        Args:
            real_logits: [B] logits computed from ``real_images``.
            real_images: [B, C, H, W], a leaf with ``requires_grad=True``.
        """
        (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
        return grad.float().square().sum(dim=(1, 2, 3))


def mode_seeking(images: Tensor, z: Tensor, eps: float = 1e-5) -> Tensor:
    """MSGAN's term for the pairs (i, i + B/2) of a batch whose two halves share conditions:
    ``1 / (mean_pairs(mean|x_i - x_j|) / mean_pairs(mean|z_i - z_j|) + eps)``, a scalar.

    Args:
        images: [B, C, H, W] generator outputs, B >= 2 (an odd last row is left out).
        z: [B, z_dim] the latents they came from.
    """
    h = images.shape[0] // 2
    d_images = (images[:h] - images[h:2 * h]).abs().float().mean()
    d_z = (z[:h] - z[h:2 * h]).abs().float().mean()
    return 1.0 / (d_images / d_z + eps)
