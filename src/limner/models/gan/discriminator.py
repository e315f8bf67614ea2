"""A residual discriminator with a minibatch standard-deviation layer and a projection head for
the condition.

Sources:
- Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2,
  https://arxiv.org/abs/1912.04958, Fig. 7c): the residual discriminator, skip paths scaled by
  1/sqrt(2).
- Karras et al. 2018, "Progressive Growing of GANs" (https://arxiv.org/abs/1710.10196, §3): the
  minibatch standard deviation feature, computed over groups of ``mbstd_group`` images.
- Miyato & Koyama 2018, "cGANs with Projection Discriminator" (https://arxiv.org/abs/1802.05637,
  eq. 3): ``D(x, y) = psi(phi(x)) + <embed(y), phi(x)>``; here ``embed`` projects the condition
  vector of the discriminator's own encoder (a class embedding table, or a second text encoder),
  scaled by 1/sqrt(features) as in StyleGAN2-ADA's conditional discriminator.

"Lite": average pooling instead of FIR-filtered strided convolutions. Every operation supports
double backward, which the R1 penalty needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from limner.conditioning.base import CondInputs
from limner.conditioning.encoder_base import CondEncoder
from limner.errors import UsageError
from limner.models.gan.config import checked_keys
from limner.models.gan.generator import EqualConv2d, EqualLinear, feature_channels, feature_sizes


@dataclass
class DiscriminatorConfig:
    """Sizes of the discriminator (saved in the run config under ``family.discriminator``).

    Attributes:
        resolution, channels: input image side and channels.
        channel_base, channel_max: feature maps at side r are ``min(channel_max, channel_base // r)``.
        mbstd_group: images per minibatch-std group (the largest divisor of the batch up to this).
        mbstd_features: feature channels the std is averaged within (StyleGAN2: 1).
        cond_dim: width of the condition vector of the discriminator's encoder (0 = unconditional).
    """

    resolution: int
    channels: int
    channel_base: int = 1024
    channel_max: int = 128
    mbstd_group: int = 4
    mbstd_features: int = 1
    cond_dim: int = 0

    def __post_init__(self) -> None:
        if self.resolution < 4:
            raise UsageError(f"the GAN needs images of at least 4 px, got {self.resolution}")
        for name in ("channel_base", "channel_max", "mbstd_group", "mbstd_features"):
            if getattr(self, name) < 1:
                raise UsageError(f"discriminator {name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiscriminatorConfig":
        return cls(**checked_keys(cls, data, "discriminator"))


def minibatch_std(x: Tensor, group_size: int = 4, features: int = 1) -> Tensor:
    """Append the mean standard deviation over image groups as ``features`` channels (ProGAN §3).

    Groups are images b, b + B/G, b + 2B/G, ... with G the largest divisor of B up to
    ``group_size``. x [B, C, H, W] -> [B, C + features, H, W].
    """
    B, C, H, W = x.shape
    G = max(g for g in range(1, min(group_size, B) + 1) if B % g == 0)
    y = x.reshape(G, B // G, features, C // features, H, W)  # [G, M, F, c, H, W]
    y = (y - y.mean(dim=0)).square().mean(dim=0)  # variance over the group, [M, F, c, H, W]
    y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))  # [M, F]
    y = y.reshape(-1, features, 1, 1).repeat(G, 1, H, W)  # [B, F, H, W]
    return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    """Residual block halving the side: conv3x3 -> pool -> conv3x3, plus pool -> 1x1 on the skip,
    summed and scaled by 1/sqrt(2) (StyleGAN2 Fig. 7c)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, act=False)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C_in, H, W] -> [B, C_out, H/2, W/2]."""
        skip = self.skip(F.avg_pool2d(x, 2))
        x = self.conv1(F.avg_pool2d(self.conv0(x), 2))
        return (x + skip) * (1 / math.sqrt(2.0))


class Discriminator(nn.Module):
    """Images (+ condition inputs) -> one real/fake logit per image; saved as ``D``.

    Args:
        config: sizes.
        encoder: the discriminator's own condition encoder (same kind and vocabulary as the
            generator's, trained by D's loss), read through ``Conditioning.vector``.
    """

    def __init__(self, config: DiscriminatorConfig, encoder: CondEncoder) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        sizes = feature_sizes(config.resolution)[::-1]  # e.g. [16, 8, 4]
        ch = [feature_channels(s, config.channel_base, config.channel_max) for s in sizes]
        self.from_rgb = EqualConv2d(config.channels, ch[0], 1)
        self.blocks = nn.ModuleList(DiscriminatorBlock(a, b) for a, b in zip(ch[:-1], ch[1:]))
        side, width = sizes[-1], ch[-1]
        if width % config.mbstd_features:
            raise UsageError(f"mbstd_features ({config.mbstd_features}) must divide the last "
                             f"discriminator width ({width})")
        self.conv = EqualConv2d(width + config.mbstd_features, width, 3)
        self.fc = EqualLinear(width * side * side, width, act=True)
        # psi(phi) = <v, phi> + b, a vector rather than a [1, F] matrix so that the weight's
        # gradient has the parameter's strides (DDP warns on a mismatch).
        self.out_weight = nn.Parameter(torch.randn(width))
        self.out_bias = nn.Parameter(torch.zeros(()))
        self.project = EqualLinear(config.cond_dim, width) if config.cond_dim else None
        self.features = width

    def forward(self, x: Tensor, inputs: CondInputs | None = None) -> Tensor:
        """x [B, C, H, W] in [-1, 1] -> logits [B]."""
        h = self.from_rgb(x)
        for block in self.blocks:
            h = block(h)
        h = self.conv(minibatch_std(h, self.config.mbstd_group, self.config.mbstd_features))
        phi = self.fc(h.flatten(1))  # [B, F], phi(x) in Miyato & Koyama's notation
        logits = phi @ (self.out_weight / math.sqrt(self.features)) + self.out_bias  # [B]
        if self.project is None:
            return logits
        if inputs is None:
            raise ValueError("this discriminator is conditional: give condition inputs")
        y = self.project(self.encoder(inputs).vector)  # [B, F]
        return logits + (phi * y).sum(dim=1) / math.sqrt(self.features)
