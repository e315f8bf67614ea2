"""A StyleGAN2-lite generator: mapping network z -> w, then a synthesis network of
weight-demodulated convolutions from a learned constant, with skip-connected RGB outputs.

Sources:
- Karras, Laine & Aila 2019, "A Style-Based Generator Architecture for Generative Adversarial
  Networks" (StyleGAN, https://arxiv.org/abs/1812.04948): mapping network, per-layer styles from w,
  learned constant input, and the truncation trick toward the mean w (§3.2 ``w' = w_avg +
  psi (w - w_avg)``, with ``w_avg`` tracked during training).
- Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2,
  https://arxiv.org/abs/1912.04958): weight modulation/demodulation (eqs. 1-3) and the "skip"
  generator whose RGB outputs are upsampled and summed (Fig. 7).
- Karras et al. 2018, "Progressive Growing of GANs" (ProGAN, https://arxiv.org/abs/1710.10196,
  §4.1-4.2): equalized learning rate and normalising the latent to unit second moment.
- Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data" (ADA,
  https://arxiv.org/abs/2006.06676): the conditional mapping network (an embedding of the
  condition, normalised and concatenated with the normalised z).

"Lite" means: no per-pixel noise inputs (an image is a function of z and the condition only), no
style mixing or path-length regularisation, bilinear resampling instead of FIR filters, and one w
for every layer. The primitives (equalized linear/conv, ``lrelu``) are shared with
``discriminator.py``.
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

LRELU_GAIN = math.sqrt(2.0)  # keeps the activation variance of a leaky ReLU(0.2) near 1


# ----------------------------------------------------------------------------
# Configuration


@dataclass
class GeneratorConfig:
    """Sizes of the generator (saved in the run config under ``family.generator``).

    Attributes:
        resolution: output side in pixels (>= 4; the synthesis starts at ``start_size(res)``).
        channels: image channels (1 or 3).
        z_dim: latent size.
        w_dim: intermediate latent (style) size.
        mapping_layers: fully connected layers of the mapping network.
        mapping_lr_mul: learning-rate multiplier of the mapping network (StyleGAN: 0.01).
        channel_base, channel_max: feature maps at side r are ``min(channel_max, channel_base // r)``.
        cond_dim: width of ``Conditioning.vector`` (0 = unconditional).
        w_avg_beta: decay of the running mean of w used by the truncation trick.
    """

    resolution: int
    channels: int
    z_dim: int = 128
    w_dim: int = 128
    mapping_layers: int = 4
    mapping_lr_mul: float = 0.01
    channel_base: int = 1024
    channel_max: int = 128
    cond_dim: int = 0
    w_avg_beta: float = 0.995

    def __post_init__(self) -> None:
        if self.resolution < 4:
            raise UsageError(f"the GAN needs images of at least 4 px, got {self.resolution}")
        for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max"):
            if getattr(self, name) < 1:
                raise UsageError(f"generator {name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GeneratorConfig":
        return cls(**checked_keys(cls, data, "generator"))


def feature_sizes(resolution: int) -> list[int]:
    """Feature-map sides from the constant input up to ``resolution``: halve while even and >= 8.

    16 -> [4, 8, 16]; 24 -> [6, 12, 24]; 20 -> [5, 10, 20].
    """
    sizes = [resolution]
    while sizes[0] % 2 == 0 and sizes[0] >= 8:
        sizes.insert(0, sizes[0] // 2)
    return sizes


def feature_channels(size: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at side ``size`` (StyleGAN2's ``channel_base // res``, capped)."""
    return max(1, min(channel_max, channel_base // size))


# ----------------------------------------------------------------------------
# Primitives (also used by the discriminator)


def lrelu(x: Tensor) -> Tensor:
    """Leaky ReLU(0.2) scaled by sqrt(2), as StyleGAN's ``bias_act``."""
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale each row of x [B, D] to unit mean square (ProGAN's pixel norm on the latent)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualLinear(nn.Module):
    """Fully connected layer with the equalized learning rate (ProGAN §4.1).

    Weights are stored as N(0, 1/lr_mul^2) and scaled by ``lr_mul / sqrt(in_features)`` at run
    time, so Adam's per-parameter step sizes act alike on every layer; ``lr_mul`` slows a layer
    down (the mapping network uses 0.01).

    Args:
        in_features, out_features: widths.
        bias_init: initial value of the effective bias (1 for StyleGAN2's style affines).
        lr_mul: learning-rate multiplier.
        act: apply ``lrelu`` after the affine map.
    """

    def __init__(self, in_features: int, out_features: int, *, bias_init: float = 0.0,
                 lr_mul: float = 1.0, act: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        """x [B, in] -> [B, out]."""
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return lrelu(x) if self.act else x


class EqualConv2d(nn.Module):
    """Convolution (same padding) with the equalized learning rate (ProGAN §4.1).

    Args:
        in_channels, out_channels, kernel_size: as ``nn.Conv2d``.
        bias: learn a bias.
        act: apply ``lrelu`` after the convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
                 act: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C_in, H, W] -> [B, C_out, H, W]."""
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.weight.shape[-1] // 2)
        return lrelu(x) if self.act else x


def upsample2x(x: Tensor) -> Tensor:
    """Bilinear x2 upsampling [B, C, H, W] -> [B, C, 2H, 2W] (StyleGAN2 uses an FIR filter)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------
# Blocks


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled by a style from w (StyleGAN2 eq. 1) and whose
    outputs are demodulated to unit expected variance (eq. 3).

    Computed in the equivalent "non-fused" order (scale the activations, convolve with the shared
    weight, scale the outputs), which is cheaper than a grouped convolution for small batches.

    Args:
        in_channels, out_channels, kernel_size: as a convolution.
        w_dim: size of w.
        demodulate: False for the toRGB layers.
        up: bilinear x2 upsampling before the convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int, *,
                 demodulate: bool = True, up: bool = False) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.demodulate = demodulate
        self.up = up

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x [B, C_in, H, W], w [B, w_dim] -> [B, C_out, H', W'] (H' = 2H when ``up``)."""
        s = self.affine(w)  # [B, C_in], the style
        weight = self.weight * self.weight_gain  # [C_out, C_in, k, k]
        if self.up:
            x = upsample2x(x)
        x = F.conv2d(x * s[:, :, None, None], weight, padding=weight.shape[-1] // 2)
        if self.demodulate:
            # eq. 3: sigma_j = sqrt(sum_{i,k} (s_i w_ijk)^2) for each sample b and output j
            sigma_sq = s.square() @ weight.square().sum(dim=(2, 3)).t()  # [B, C_out]
            x = x * (sigma_sq + 1e-8).rsqrt()[:, :, None, None]
        return x + self.bias[None, :, None, None]


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (upsample +) two modulated 3x3 convolutions, then a
    toRGB output added to the upsampled RGB of the previous block (StyleGAN2 Fig. 7b).

    The first block starts from the learned constant and has one convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, img_channels: int, w_dim: int,
                 *, first: bool) -> None:
        super().__init__()
        self.conv0 = None if first else ModulatedConv2d(in_channels, out_channels, 3, w_dim, up=True)
        self.conv1 = ModulatedConv2d(out_channels, out_channels, 3, w_dim)
        self.to_rgb = ModulatedConv2d(out_channels, img_channels, 1, w_dim, demodulate=False)

    def forward(self, x: Tensor, rgb: Tensor | None, w: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C_in, H, W] (H/2 unless first), rgb [B, img, H/2, W/2] or None -> (x, rgb)."""
        if self.conv0 is not None:
            x = lrelu(self.conv0(x, w))
        x = lrelu(self.conv1(x, w))
        y = self.to_rgb(x, w)
        return x, y if rgb is None else upsample2x(rgb) + y


class MappingNetwork(nn.Module):
    """z [B, z_dim] (+ condition [B, cond_dim]) -> w [B, w_dim] through an MLP (StyleGAN §2), and
    the running mean ``w_avg`` [w_dim] the truncation trick pulls toward.

    A condition is embedded, normalised and concatenated with the normalised z (ADA's conditional
    mapping), so neither input dominates by scale.
    """

    def __init__(self, z_dim: int, w_dim: int, layers: int, cond_dim: int = 0,
                 lr_mul: float = 0.01, w_avg_beta: float = 0.995) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.w_avg_beta = z_dim, w_dim, w_avg_beta
        self.embed = EqualLinear(cond_dim, w_dim) if cond_dim else None
        widths = [z_dim + (w_dim if cond_dim else 0)] + [w_dim] * layers
        self.net = nn.Sequential(*(EqualLinear(a, b, lr_mul=lr_mul, act=True)
                                   for a, b in zip(widths[:-1], widths[1:])))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """z [B, z_dim], c [B, cond_dim] or None -> w [B, w_dim]."""
        x = normalize_2nd_moment(z)
        if self.embed is not None:
            if c is None:
                raise ValueError("this mapping network is conditional: give a condition vector")
            x = torch.cat([x, normalize_2nd_moment(self.embed(c))], dim=1)
        return self.net(x)

    @torch.no_grad()
    def update_w_avg(self, w: Tensor) -> None:
        """Move ``w_avg`` toward the batch mean of w [B, w_dim] (decay ``w_avg_beta``)."""
        self.w_avg.copy_(w.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))


class SynthesisNetwork(nn.Module):
    """w [B, w_dim] -> images [B, C, H, W], starting from a learned constant."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        sizes = feature_sizes(config.resolution)
        ch = [feature_channels(s, config.channel_base, config.channel_max) for s in sizes]
        self.const = nn.Parameter(torch.randn(ch[0], sizes[0], sizes[0]))
        self.blocks = nn.ModuleList(
            SynthesisBlock(ch[max(i - 1, 0)], ch[i], config.channels, config.w_dim, first=i == 0)
            for i in range(len(sizes))
        )

    def forward(self, w: Tensor) -> Tensor:
        """w [B, w_dim] -> [B, C, H, W], roughly in [-1, 1] (no output squashing)."""
        x = self.const[None].expand(w.shape[0], -1, -1, -1)
        rgb = None
        for block in self.blocks:
            x, rgb = block(x, rgb, w)
        return rgb


# ----------------------------------------------------------------------------
# Generator


class Generator(nn.Module):
    """The condition encoder, mapping and synthesis networks: one module, saved as ``G``.

    Args:
        config: sizes.
        encoder: the condition encoder (trained by G's loss; the discriminator owns another).
    """

    def __init__(self, config: GeneratorConfig, encoder: CondEncoder) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.mapping = MappingNetwork(config.z_dim, config.w_dim, config.mapping_layers,
                                      config.cond_dim, config.mapping_lr_mul, config.w_avg_beta)
        self.synthesis = SynthesisNetwork(config)

    def condition(self, inputs: CondInputs | None) -> Tensor | None:
        """The condition vector [B, cond_dim] of ``inputs`` (None for an unconditional model)."""
        if self.config.cond_dim == 0 or inputs is None:
            return None
        return self.encoder(inputs).vector

    def forward(self, z: Tensor, inputs: CondInputs | None = None, *,
                update_w_avg: bool = False) -> Tensor:
        """Training forward: z [B, z_dim] (+ condition inputs) -> images [B, C, H, W].

        Args:
            update_w_avg: also move the tracked mean w (the generator's own training step).
        """
        w = self.mapping(z, self.condition(inputs))
        if update_w_avg:
            self.mapping.update_w_avg(w)
        return self.synthesis(w)

    @torch.no_grad()
    def sample(self, z: Tensor, inputs: CondInputs | None = None, *, psi: float = 1.0,
               centre_samples: int = 256) -> Tensor:
        """Images with the truncation trick ``w' = centre + psi (w - centre)`` (StyleGAN §3.2).

        The centre is the tracked ``w_avg`` for an unconditional model and, for a conditional
        one, the mean w of that row's condition over ``centre_samples`` fixed latents (so a
        class or prompt keeps its identity at psi = 0). Both depend on neither the batch nor the
        seeds, so each image depends only on its own latent and condition.

        Args:
            z: [B, z_dim] latents.
            psi: 1 = no truncation, 0 = the centre only.
        """
        c = self.condition(inputs)
        w = self.mapping(z, c)
        if psi != 1.0:
            w = torch.lerp(self.truncation_centre(c, w.shape[0], centre_samples), w, psi)
        return self.synthesis(w)

    def truncation_centre(self, c: Tensor | None, batch_size: int, samples: int) -> Tensor:
        """The point truncation pulls toward, [B, w_dim]."""
        if c is None:
            return self.mapping.w_avg[None].expand(batch_size, -1)
        gen = torch.Generator().manual_seed(0)  # fixed latents: the centre is part of the model
        z = torch.randn(samples, self.config.z_dim, generator=gen).to(c.device, c.dtype)
        B, K = c.shape[0], samples
        w = self.mapping(z.repeat(B, 1), c.repeat_interleave(K, dim=0))  # [B*K, w_dim]
        return w.view(B, K, -1).mean(dim=1)
