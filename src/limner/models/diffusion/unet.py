"""Convolutional U-Net backbone for diffusion models, with a named size registry.

Architecture: the DDPM U-Net of Ho et al. (2020, https://arxiv.org/abs/2006.11239) with the
multi-head attention and zero-initialised residual branches of Dhariwal & Nichol (2021,
https://arxiv.org/abs/2105.05233). Each level holds ``num_res_blocks`` residual blocks (plus
self-attention at the feature-map sizes in ``attn_resolutions``); the decoder has one more block
per level, each reading the concatenation of its input and one encoder activation. The noise label
is the EDM ``c_noise = log(sigma) / 4`` (Karras et al. 2022, https://arxiv.org/abs/2206.00364),
embedded with Fourier features; the EDM preconditioning itself lives in ``precond.py``. Residual
blocks take the embedding through adaptive group norm (scale and shift after the norm, Dhariwal
& Nichol 2021); runs saved with DDPM's add-before-norm blocks load with those.

Optional conditioning (``limner.conditioning.Conditioning``): ``vector`` [B, D] goes through a
linear layer into the noise embedding (class or pooled-text conditioning); ``tokens`` [B, T, D]
with ``mask`` [B, T] are cross-attended from every attention block (Rombach et al. 2022,
https://arxiv.org/abs/2112.10752).

Speed (see ``benchmarks/README.md``): activations run channels-last, except NCHW under CPU
float16 autocast and under bfloat16 autocast where limner's compiled bfloat16 group norm is
missing (PyTorch's own channels-last low-precision group-norm backward is slow); group norm, SiLU
and the embedding's scale and shift are one fused step where that wins (``limner.nn.norms``);
attention avoids the slow low-precision CPU kernels; the embeddings of all blocks are one matrix
product; the decoder's upsampling convolutions use the equivalent transposed-convolution form
(``limner.nn.sampling``). ``memory_format`` and ``fast_ops`` switch these off; the weights and
results are the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from limner.conditioning.base import Conditioning
from limner.nn import kernels
from limner.nn import (
    Attention2d,
    Conv2d,
    Downsample2d,
    EmbMode,
    GroupNorm2d,
    NoiseEmbedding,
    ResBlock2d,
    TokenContext,
    Upsample2d,
    prepare_tokens,
)

__all__ = ["UNET_PRESETS", "MemoryFormat", "UNet", "UNetConfig", "unet_config"]

MemoryFormat = Literal["auto", "channels_last", "contiguous"]


# ---------------------------------------------------------------------------------------------
# Configuration and presets
# ---------------------------------------------------------------------------------------------


@dataclass
class UNetConfig:
    """Shape of a :class:`UNet`; JSON-serialisable through :meth:`to_dict` / :meth:`from_dict`.

    Args:
        in_channels, out_channels: image channels in and out.
        channels: width of each level, from full resolution down; the level count is its length.
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        attn_resolutions: feature-map sizes (H of a square map) whose blocks get self-attention.
        resolution: image size the attention placement is computed for.
        dropout: dropout probability inside residual blocks.
        head_dim: width of one attention head (heads = channels / head_dim at each attention).
        emb_dim: noise-embedding width; None = 4 * channels[0].
        cond_dim: 0 = unconditional; else the width of ``Conditioning.vector`` and ``.tokens``.
        cross_attention: attention blocks also attend to ``Conditioning.tokens`` (needs cond_dim).
        vector_cond: with cond_dim > 0, add a projection of ``Conditioning.vector`` to the noise
            embedding. Set False for token-only conditioning (no unused parameters under DDP).
        mid_attention: self-attention between the two middle residual blocks.
        norm_groups: maximum group-norm groups (the largest divisor of the width up to this).
        emb_mode: how residual blocks take the noise (+ condition) embedding: "scale_shift"
            (adaptive group norm, the default) or "shift" (added before the norm, as in DDPM; the
            norm erases it in one-channel groups). Configs saved without this key are "shift".
        memory_format: activation layout (runtime only, not architecture): "channels_last",
            "contiguous" (NCHW) or "auto" = channels-last, except NCHW under CPU float16
            autocast, or bfloat16 autocast where limner's compiled bfloat16 group norm is
            unavailable (PyTorch's NCHW group norm backward is much faster; see
            benchmarks/README.md).
        fast_ops: the faster equivalent ops of ``limner.nn`` (fused group norm where it wins,
            transposed-convolution upsampling, explicit low-precision attention on the CPU);
            False = reference ops (runtime only).
    """

    in_channels: int = 3
    out_channels: int = 3
    channels: tuple[int, ...] = (32, 64, 128, 128)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (8,)
    resolution: int = 32
    dropout: float = 0.0
    head_dim: int = 32
    emb_dim: int | None = None
    cond_dim: int = 0
    cross_attention: bool = False
    vector_cond: bool = True
    mid_attention: bool = True
    norm_groups: int = 32
    emb_mode: EmbMode = "scale_shift"
    memory_format: MemoryFormat = "auto"
    fast_ops: bool = True

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        self._validate()

    def _validate(self) -> None:
        if not self.channels or min(self.channels) <= 0:
            raise ValueError(f"channels must be positive widths, got {self.channels}")
        if self.channels[0] % 2:
            raise ValueError(f"channels[0] must be even (Fourier features), got {self.channels[0]}")
        factor = 2 ** (len(self.channels) - 1)
        if self.resolution % factor:
            raise ValueError(f"resolution {self.resolution} is not divisible by {factor} "
                             f"({len(self.channels)} levels)")
        if self.emb_mode not in get_args(EmbMode):
            raise ValueError(f"emb_mode must be one of {get_args(EmbMode)}, got {self.emb_mode!r}")
        if self.memory_format not in get_args(MemoryFormat):
            raise ValueError(f"memory_format must be one of {get_args(MemoryFormat)}, got {self.memory_format!r}")
        if self.cross_attention and self.cond_dim <= 0:
            raise ValueError("cross_attention needs cond_dim > 0 (the token width)")
        if self.cross_attention and not self.mid_attention and not self.attention_levels():
            raise ValueError("cross_attention needs at least one attention block")
        for width in self._attention_widths():
            if width % self.head_dim:
                raise ValueError(f"attention width {width} is not a multiple of head_dim {self.head_dim}")

    def attention_levels(self) -> list[int]:
        """Indices of the levels whose feature maps are in ``attn_resolutions``."""
        return [i for i in range(len(self.channels)) if self.resolution >> i in self.attn_resolutions]

    def _attention_widths(self) -> list[int]:
        widths = [self.channels[i] for i in self.attention_levels()]
        return widths + ([self.channels[-1]] if self.mid_attention else [])

    @property
    def embedding_dim(self) -> int:
        return self.emb_dim if self.emb_dim is not None else 4 * self.channels[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UNetConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error. A dict without ``emb_mode``
        was saved before adaptive group norm existed and gets the block it was trained with."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig keys: {unknown}")
        return cls(**{"emb_mode": "shift", **data})


# Sizes. in/out channels, resolution and conditioning are set by the caller.
UNET_PRESETS: dict[str, dict[str, Any]] = {
    # Tests: 73k parameters (unconditional); attention at 16x16 and 8x8, so at every level of a
    # 16 px image and at the lower level (and middle) of a 32 px one.
    "tiny": dict(channels=(16, 16), num_res_blocks=1, attn_resolutions=(8, 16), head_dim=8,
                 norm_groups=8),
    # CPU demo at 32 px (6.3M parameters): the shape benchmarked against diffusers' UNet2DModel.
    "small": dict(channels=(32, 64, 128, 128), num_res_blocks=2, attn_resolutions=(8,), head_dim=32),
    # GPU, 32-64 px: the DDPM CIFAR-10 shape of Ho et al. (2020), attention at 16x16.
    "base": dict(channels=(128, 256, 256, 256), num_res_blocks=2, attn_resolutions=(16,),
                 head_dim=64, dropout=0.1),
}


def unet_config(preset: str, **overrides: Any) -> UNetConfig:
    """The :class:`UNetConfig` of a named preset with ``overrides`` applied."""
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; presets: {', '.join(UNET_PRESETS)}")
    return UNetConfig(**{**UNET_PRESETS[preset], **overrides})


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------


class _Level(nn.Module):
    """One resolution of the encoder or decoder: residual blocks, optional attention, resampler."""

    def __init__(self, blocks: list[ResBlock2d], attention: list[Attention2d] | None,
                 resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attention = nn.ModuleList(attention) if attention else None
        self.resample = resample


class UNet(nn.Module):
    """Diffusion U-Net; see the module docstring.

    ``forward(x, noise_labels, cond)``: x [B, in_channels, H, W] (already scaled by c_in),
    noise_labels [B] float (c_noise), cond an optional :class:`Conditioning` → [B, out_channels,
    H, W]. H and W must be divisible by 2 ** (levels - 1). The network reads only the condition
    fields its config enables: ``vector`` when cond_dim > 0 and vector_cond, ``tokens``/``mask``
    when cross_attention; a missing field contributes nothing.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c, emb = config, config.embedding_dim
        self.embed = NoiseEmbedding(c.channels[0], emb)
        self.cond_embed = nn.Linear(c.cond_dim, emb) if c.cond_dim and c.vector_cond else None
        self.conv_in = Conv2d(c.in_channels, c.channels[0], 3, padding=1)
        self.encoder, skip_widths = self._build_encoder()
        self.middle = self._build_middle()
        self.decoder = self._build_decoder(skip_widths)
        self.norm_out = GroupNorm2d(c.channels[0], c.norm_groups)
        self.conv_out = Conv2d(c.channels[0], c.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self._shift_widths = [b.emb_width for b in self._res_blocks()]
        self.shift_proj = nn.Linear(emb, sum(self._shift_widths))  # every block's embedding at once
        for module in self.modules():
            if isinstance(module, (Conv2d, GroupNorm2d, Upsample2d, Attention2d)):
                module.fast = c.fast_ops

    # -- construction ------------------------------------------------------------------------

    def _res(self, cin: int, cout: int) -> ResBlock2d:
        return ResBlock2d(cin, cout, self.config.dropout, self.config.norm_groups, self.config.emb_mode)

    def _attn(self, width: int) -> Attention2d:
        c = self.config
        return Attention2d(width, c.head_dim, c.cond_dim if c.cross_attention else 0, c.norm_groups)

    def _build_encoder(self) -> tuple[nn.ModuleList, list[int]]:
        c, levels = self.config, nn.ModuleList()
        width, skips, attn_levels = c.channels[0], [c.channels[0]], c.attention_levels()
        for i, out in enumerate(c.channels):
            blocks = [self._res(width if j == 0 else out, out) for j in range(c.num_res_blocks)]
            attention = [self._attn(out) for _ in blocks] if i in attn_levels else None
            down = Downsample2d(out) if i < len(c.channels) - 1 else None
            levels.append(_Level(blocks, attention, down))
            width = out
            skips += [out] * (c.num_res_blocks + (down is not None))
        return levels, skips

    def _build_middle(self) -> _Level:
        width = self.config.channels[-1]
        attention = [self._attn(width)] if self.config.mid_attention else None
        return _Level([self._res(width, width), self._res(width, width)], attention, None)

    def _build_decoder(self, skips: list[int]) -> nn.ModuleList:
        c, levels = self.config, nn.ModuleList()
        width, skips, attn_levels = c.channels[-1], list(skips), c.attention_levels()
        for i in reversed(range(len(c.channels))):
            out = c.channels[i]
            blocks = []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(self._res(width + skips.pop(), out))
                width = out
            attention = [self._attn(out) for _ in blocks] if i in attn_levels else None
            levels.append(_Level(blocks, attention, Upsample2d(out) if i > 0 else None))
        return levels

    def _res_blocks(self) -> Iterator[ResBlock2d]:
        for level in [*self.encoder, self.middle, *self.decoder]:
            yield from level.blocks

    # -- forward -----------------------------------------------------------------------------

    def forward(self, x: Tensor, noise_labels: Tensor, cond: Conditioning | None = None) -> Tensor:
        """Denoiser backbone output F(x, c_noise, cond); see the class docstring for shapes."""
        self._check_inputs(x, noise_labels)
        if noise_labels.dim() == 0:
            noise_labels = noise_labels.expand(x.shape[0])
        shifts = iter(self._shifts(noise_labels, cond))
        context = self._token_context(cond)
        h = self.conv_in(x.contiguous(memory_format=self._memory_format(x)))
        skips = [h]
        for level in self.encoder:
            h = self._encoder_level(level, h, shifts, context, skips)
        h = self._middle(h, shifts, context)
        for level in self.decoder:
            h = self._decoder_level(level, h, shifts, context, skips)
        return self.conv_out(self.norm_out(h)).contiguous()

    def _memory_format(self, x: Tensor) -> torch.memory_format:
        choice = self.config.memory_format
        if choice == "auto":
            choice = "contiguous" if self._low_precision_cpu_nchw(x) else "channels_last"
        return torch.channels_last if choice == "channels_last" else torch.contiguous_format

    def _low_precision_cpu_nchw(self, x: Tensor) -> bool:
        """Under CPU low-precision autocast, NCHW unless this is bfloat16 with the compiled group
        norm, whose channels-last forward and backward make channels-last the faster layout
        (sampling ~15% faster end to end; a training step ~10% faster on a 2-core AMD EPYC
        model 17, with oneDNN's bfloat16 convolutions or the Winograd kernel alike). Without the
        kernel, PyTorch's channels-last bfloat16 group-norm backward is the slow one."""
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
            return False
        dtype = torch.get_autocast_dtype("cpu")
        if dtype not in (torch.bfloat16, torch.float16):
            return False
        return not (dtype == torch.bfloat16 and self.config.fast_ops and kernels.available())

    def _check_inputs(self, x: Tensor, noise_labels: Tensor) -> None:
        factor = 2 ** (len(self.config.channels) - 1)
        if x.dim() != 4 or x.shape[1] != self.config.in_channels or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"expected x [B, {self.config.in_channels}, H, W] with H and W divisible by "
                             f"{factor}, got {tuple(x.shape)}")
        if noise_labels.dim() > 1 or (noise_labels.dim() == 1 and noise_labels.shape[0] != x.shape[0]):
            raise ValueError(f"expected noise_labels [B] or a scalar, got {tuple(noise_labels.shape)}")

    def _shifts(self, noise_labels: Tensor, cond: Conditioning | None) -> tuple[Tensor, ...]:
        """Noise (+ vector condition) embedding → one [B, emb_width] projection per residual block."""
        emb = self.embed(noise_labels)  # [B, E]
        if self.cond_embed is not None and cond is not None and cond.vector is not None:
            emb = emb + self.cond_embed(cond.vector.to(emb.dtype))
        return self.shift_proj(F.silu(emb)).split(self._shift_widths, dim=1)

    def _token_context(self, cond: Conditioning | None) -> TokenContext | None:
        if not self.config.cross_attention or cond is None or cond.tokens is None:
            return None
        return prepare_tokens(cond.tokens, cond.mask)

    def _encoder_level(self, level: _Level, h: Tensor, shifts: Iterator[Tensor],
                       context: TokenContext | None, skips: list[Tensor]) -> Tensor:
        for j, block in enumerate(level.blocks):
            h = block(h, next(shifts))
            if level.attention is not None:
                h = level.attention[j](h, context)
            skips.append(h)
        if level.resample is not None:
            h = level.resample(h)
            skips.append(h)
        return h

    def _middle(self, h: Tensor, shifts: Iterator[Tensor], context: TokenContext | None) -> Tensor:
        first, second = self.middle.blocks
        h = first(h, next(shifts))
        if self.middle.attention is not None:
            h = self.middle.attention[0](h, context)
        return second(h, next(shifts))

    def _decoder_level(self, level: _Level, h: Tensor, shifts: Iterator[Tensor],
                       context: TokenContext | None, skips: list[Tensor]) -> Tensor:
        for j, block in enumerate(level.blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), next(shifts))
            if level.attention is not None:
                h = level.attention[j](h, context)
        return level.resample(h) if level.resample is not None else h
