"""DiT: a transformer backbone for the EDM denoiser.

Peebles & Xie, "Scalable Diffusion Models with Transformers" (ICCV 2023,
https://arxiv.org/abs/2212.09748): the (latent) image is cut into p x p patches, each linearly
embedded and given a fixed 2-D sine-cosine position; N transformer blocks follow, each conditioned
by **adaLN-Zero** (Section 3.2): an MLP of the conditioning vector c (noise-level embedding plus
the class or pooled-text embedding) regresses a shift, scale and gate for the attention and the
MLP branch, and is initialised to zero so every block starts as the identity; a final adaptive
layer norm and a zero-initialised linear map back to p x p x C values per patch. Sizes follow the
paper's table (S: 384 wide, 12 deep, 6 heads; B: 768, 12, 12) with patch 2 or 4.

Text conditioning adds, per block, cross-attention from the patch tokens to the text tokens
(as the paper's cross-attention variant; PixArt-alpha, Chen et al. 2023, uses the same layout),
its output projection zero-initialised. Attention is PyTorch's ``scaled_dot_product_attention``.

Same call as :class:`limner.models.diffusion.unet.UNet`: ``F(x [B,C,H,W], c_noise [B], cond)
-> [B,C,H,W]``, so ``EDMPrecond`` and every sampler are unchanged. Written from the paper; the
DiT reference code is under a non-commercial licence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from limner.conditioning.base import Conditioning
from limner.errors import UsageError
from limner.models.net_config import NetConfig
from limner.nn.embeddings import NoiseEmbedding

__all__ = ["DIT_PRESETS", "DiT", "DiTConfig", "dit_config"]


@dataclass
class DiTConfig(NetConfig):
    """Shape of a :class:`DiT`; JSON-serialisable through :meth:`to_dict` / :meth:`from_dict`.

    Args:
        in_channels, out_channels: channels of the (latent) image.
        resolution: its side in pixels (square); must be a multiple of ``patch_size``.
        patch_size: side p of a patch (the paper's /2 and /4 models).
        dim: token width (S: 384, B: 768).
        depth: number of blocks (12 for S and B).
        heads: attention heads (S: 6, B: 12).
        mlp_ratio: hidden width of the MLP / dim (4 in the paper).
        cond_dim: width of the condition's vector and tokens (0 = unconditional).
        cross_attention: attend to the condition's tokens (text runs).
        dropout: dropout in the MLP and attention outputs (training only).
    """

    in_channels: int = 3
    out_channels: int = 3
    resolution: int = 32
    patch_size: int = 2
    dim: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    cond_dim: int = 0
    cross_attention: bool = False
    dropout: float = 0.0

    what: ClassVar[str] = "DiT"

    def validate(self) -> "DiTConfig":
        """A UsageError naming the first impossible field (``--set family.net.*``)."""
        self.check_at_least_one("patch_size", "dim", "depth", "heads", "resolution")
        if self.resolution % self.patch_size:
            raise self.invalid("patch_size", f"must divide the resolution ({self.resolution})")
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise self.invalid("heads", f"must divide dim ({self.dim}) into heads of even width")
        self.check_dropout_and_mlp_ratio()
        return self

    @property
    def tokens(self) -> int:
        return (self.resolution // self.patch_size) ** 2


# The paper's sizes (Table 1) plus a tiny one for tests; ``/p`` is the patch size.
DIT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=32, depth=2, heads=2, patch_size=4),
    "S/2": dict(dim=384, depth=12, heads=6, patch_size=2),
    "S/4": dict(dim=384, depth=12, heads=6, patch_size=4),
    "B/2": dict(dim=768, depth=12, heads=12, patch_size=2),
    "B/4": dict(dim=768, depth=12, heads=12, patch_size=4),
}


def dit_config(preset: str, **overrides: Any) -> DiTConfig:
    """The :class:`DiTConfig` of a named size with ``overrides`` applied."""
    if preset not in DIT_PRESETS:
        raise UsageError(f"unknown DiT size {preset!r} (choose from {', '.join(DIT_PRESETS)})")
    return DiTConfig(**{**DIT_PRESETS[preset], **overrides})


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x [B, N, D] normalised elsewhere, then x (1 + scale) + shift with [B, D] terms."""
    return x * (1 + scale[:, None]) + shift[:, None]


class SelfAttention(nn.Module):
    """Multi-head attention over the patch tokens (or to a context), via SDPA."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """x [B, N, D]; context [B, T, D_c] (None = x); mask [B, T] bool, True = attend."""
        B, N, D = x.shape
        ctx = x if context is None else context
        q = self.q(x).view(B, N, self.heads, -1).transpose(1, 2)  # [B, h, N, D/h]
        k, v = self.kv(ctx).view(B, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, T]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(o.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """One block: adaLN-Zero self-attention, optional cross-attention, adaLN-Zero MLP."""

    def __init__(self, c: DiTConfig):
        super().__init__()
        D = c.dim
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(D, c.heads, dropout=c.dropout)
        self.cross = None
        if c.cross_attention:
            self.norm_cross = nn.LayerNorm(D, eps=1e-6)
            self.cross = SelfAttention(D, c.heads, context_dim=c.cond_dim, dropout=c.dropout)
            nn.init.zeros_(self.cross.out.weight)
            nn.init.zeros_(self.cross.out.bias)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        hidden = int(D * c.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(D, hidden), nn.GELU(approximate="tanh"),
                                 nn.Dropout(c.dropout), nn.Linear(hidden, D))
        self.ada = nn.Linear(D, 6 * D)  # adaLN-Zero: shift, scale, gate for both branches
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None, mask: Tensor | None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None and context is not None:
            x = x + self.cross(self.norm_cross(x), context, mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """The DiT backbone F(x, c_noise, cond) (see the module docstring).

    Shapes: x [B, C_in, H, W] -> [B, C_out, H, W]; c_noise [B]; ``cond.vector`` [B, cond_dim]
    (class or pooled text) and ``cond.tokens`` [B, T, cond_dim] with ``cond.mask`` [B, T].
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        c = self.config = config.validate()
        p, D = c.patch_size, c.dim
        self.patch = nn.Conv2d(c.in_channels, D, kernel_size=p, stride=p)
        self.register_buffer("pos", sincos_2d(c.resolution // p, D), persistent=False)
        self.noise_emb = NoiseEmbedding(D, D)
        self.cond_proj = nn.Linear(c.cond_dim, D) if c.cond_dim else None
        self.blocks = nn.ModuleList(DiTBlock(c) for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(D, 2 * D)
        self.linear_out = nn.Linear(D, p * p * c.out_channels)
        for layer in (self.ada_out, self.linear_out):  # the output starts at zero (adaLN-Zero)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, noise_labels: Tensor, cond: Conditioning | None = None) -> Tensor:
        B, _, H, W = x.shape
        if noise_labels.dim() == 0:
            noise_labels = noise_labels.expand(B)
        h = self.patch(x).flatten(2).transpose(1, 2) + self.pos.to(x.dtype)  # [B, N, D]
        c = self.noise_emb(noise_labels).to(h.dtype)  # [B, D]
        context = mask = None
        if cond is not None and self.cond_proj is not None and cond.vector is not None:
            c = c + self.cond_proj(cond.vector.to(h.dtype))
        if cond is not None and self.config.cross_attention and cond.tokens is not None:
            context = cond.tokens.to(h.dtype)
            mask = cond.mask
        for block in self.blocks:
            h = block(h, c, context, mask)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=1)
        h = self.linear_out(modulate(self.norm_out(h), shift, scale))  # [B, N, p*p*C]
        return unpatchify(h, self.config.patch_size, H, W)


def unpatchify(h: Tensor, p: int, H: int, W: int) -> Tensor:
    """[B, N, p*p*C] patch values -> [B, C, H, W] (N = (H/p)(W/p), row-major patches)."""
    B, N, _ = h.shape
    h = h.view(B, H // p, W // p, p, p, -1)  # [B, h, w, p, p, C]
    return h.permute(0, 5, 1, 3, 2, 4).reshape(B, -1, H, W)


def sincos_2d(side: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine positions [side*side, dim] (Vaswani et al. 2017 per axis; half the
    width encodes the row, half the column, as in MAE and DiT)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(side, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def axis(pos: Tensor) -> Tensor:
        angle = pos.flatten()[:, None] * omega[None]
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    emb = torch.cat([axis(rows), axis(cols)], dim=1)
    if emb.shape[1] < dim:  # widths not divisible by 4
        emb = torch.cat([emb, torch.zeros(emb.shape[0], dim - emb.shape[1], dtype=emb.dtype)], dim=1)
    return emb.float()


def count_flops(config: DiTConfig) -> float:
    """Forward multiply-adds x 2 of one image (the paper's Gflops measure, attention included)."""
    c, N, D = config, config.tokens, config.dim
    per_block = 2 * N * (4 * D * D + 2 * N * D + 2 * D * D * c.mlp_ratio) + 2 * 6 * D * D
    return float(c.depth * per_block + 2 * N * D * c.in_channels * c.patch_size**2
                 + 2 * N * D * c.out_channels * c.patch_size**2)
