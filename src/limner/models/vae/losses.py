"""Losses of the VAE family: reconstruction, KL with warm-up, and the optional patch
discriminator with its adversarial and feature losses; plus PSNR, the reconstruction metric.

* KL term of the evidence lower bound for a diagonal Gaussian posterior and a unit Gaussian
  prior (Kingma & Welling 2014, "Auto-Encoding Variational Bayes", appendix B), weighted by beta
  (Higgins et al. 2017, beta-VAE) that can rise linearly from 0 (KL annealing, Bowman et al.
  2016, "Generating Sentences from a Continuous Space").
* Patch discriminator (Isola et al. 2017, pix2pix) with hinge or non-saturating logistic loss,
  as VQGAN adds to its autoencoder for sharp decodes (Esser et al. 2021, "Taming Transformers
  for High-Resolution Image Synthesis"). The feature loss compares the discriminator's
  intermediate activations of the reconstruction and of the input (feature matching as in
  pix2pixHD, Wang et al. 2018), a learned perceptual distance that needs no pretrained network.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from limner.nn import GroupNorm2d

__all__ = [
    "AdversarialLoss",
    "PatchDiscriminator",
    "ReconstructionLoss",
    "feature_loss",
    "kl_beta",
    "kl_divergence",
    "psnr",
]


# ---------------------------------------------------------------------------------------------
# Reconstruction and KL
# ---------------------------------------------------------------------------------------------


class ReconstructionLoss:
    """Per-sample reconstruction loss, the mean over pixels of (x_hat - x)^2 or |x_hat - x|.

    Args:
        kind: "mse" or "l1".
    """

    def __init__(self, kind: Literal["mse", "l1"] = "mse") -> None:
        if kind not in ("mse", "l1"):
            raise ValueError(f"reconstruction loss must be 'mse' or 'l1', got {kind!r}")
        self.kind = kind

    def __call__(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """x_hat, x [B, C, H, W] → [B]."""
        diff = x_hat.float() - x.float()
        err = diff.square() if self.kind == "mse" else diff.abs()
        return err.flatten(1).mean(1)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over latent elements → [B].

    Closed form (Kingma & Welling 2014, appendix B): 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2).
    """
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def kl_beta(step: int, beta: float, warmup: int) -> float:
    """KL weight after ``step`` completed steps: beta * min(1, step / warmup) (Bowman et al. 2016).

    ``warmup == 0`` gives ``beta`` from the first step.
    """
    if warmup <= 0:
        return beta
    return beta * min(1.0, step / warmup)


def psnr(x: Tensor, y: Tensor, data_range: float) -> Tensor:
    """Peak signal-to-noise ratio per image, 10 log10(range^2 / MSE) in dB → [B] float64.

    Args:
        x, y: [B, C, H, W] images on the same scale (uint8 with range 255, or [-1, 1] floats with
            range 2).
        data_range: max - min of the pixel scale.
    Convention: identical images have MSE 0 and PSNR ``inf``; a mean over images that include
    one is ``inf`` too.
    """
    mse = (x.double() - y.double()).square().flatten(1).mean(1)
    return torch.where(mse > 0, 10 * torch.log10(data_range**2 / mse.clamp(min=1e-300)),
                       torch.full_like(mse, math.inf))


# ---------------------------------------------------------------------------------------------
# Patch discriminator and its losses
# ---------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: real/fake logits for overlapping patches of the image.

    ``layers`` stride-2 conv4x4 (+ GroupNorm after the first) with LeakyReLU and doubling width
    (capped at 8x), one conv3x3 + GroupNorm + LeakyReLU at that resolution, and a conv3x3 to one
    logit per patch: an H x W image gives H/2^layers x W/2^layers logits (Isola et al. 2017;
    VQGAN uses it with BatchNorm, GroupNorm here keeps samples independent so real and fake can
    share one forward, and 3x3 stride-1 convolutions keep small images from shrinking to nothing).

    Args:
        in_channels: image channels.
        channels: width of the first layer.
        layers: number of stride-2 layers (receptive field grows with it).
        max_groups: group-norm groups.
    """

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3, max_groups: int = 32) -> None:
        super().__init__()
        widths = [channels * min(2**i, 8) for i in range(layers)]
        stages = [nn.Sequential(nn.Conv2d(in_channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2))]
        for i in range(1, layers):
            stages.append(_disc_stage(widths[i - 1], widths[i], 4, 2, max_groups))
        stages.append(_disc_stage(widths[-1], widths[-1], 3, 1, max_groups))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(widths[-1], 1, 3, 1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x [B, C, H, W] → (logits [B, 1, H/2^layers, W/2^layers], features of every stage)."""
        features = []
        h = x
        for stage in self.stages:
            h = stage(h)
            features.append(h)
        return self.head(h), features


def _disc_stage(cin: int, cout: int, kernel: int, stride: int, max_groups: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2 if stride == 1 else 1, bias=False),
        GroupNorm2d(cout, max_groups, act=False),
        nn.LeakyReLU(0.2),
    )


class AdversarialLoss:
    """The discriminator's and the decoder's GAN losses on patch logits.

    Args:
        kind: "hinge" (Lim & Ye 2017, as VQGAN) or "logistic" (non-saturating, Goodfellow et
            al. 2014).
    """

    def __init__(self, kind: Literal["hinge", "logistic"] = "hinge") -> None:
        if kind not in ("hinge", "logistic"):
            raise ValueError(f"adversarial loss must be 'hinge' or 'logistic', got {kind!r}")
        self.kind = kind

    def discriminator(self, real: Tensor, fake: Tensor) -> Tensor:
        """Scalar loss of D from logits of real and reconstructed images."""
        real, fake = real.float(), fake.float()
        if self.kind == "hinge":
            return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())

    def generator(self, fake: Tensor) -> Tensor:
        """Scalar adversarial loss of the decoder from D's logits of its reconstructions."""
        fake = fake.float()
        return -fake.mean() if self.kind == "hinge" else F.softplus(-fake).mean()


def feature_loss(fake: list[Tensor], real: list[Tensor]) -> Tensor:
    """Mean over layers of the L1 distance between D's features of reconstruction and input."""
    terms = [F.l1_loss(f.float(), r.detach().float()) for f, r in zip(fake, real)]
    return torch.stack(terms).mean()
