"""The VAE's convolutional encoder and the conditioned blocks it shares with the decoder.

The layout follows the VQGAN / latent-diffusion autoencoder (Esser et al. 2021,
https://arxiv.org/abs/2012.09841; Rombach et al. 2022): a stem convolution, ``num_res_blocks``
residual blocks per resolution level with a stride-2 convolution between levels, a middle block
(residual, self-attention, residual) at the lowest resolution, then GroupNorm-SiLU and a
convolution to the latent channels. The residual blocks and resamplers are ``limner.nn``'s.

Conditioning makes it a conditional VAE (Sohn et al. 2015, "Learning Structured Output
Representation using Deep Conditional Generative Models"): the encoder models q(z | x, c) and
the decoder p(x | z, c). The pooled condition vector modulates every residual block's second norm
(adaptive group norm, as a diffusion U-Net takes its noise embedding; runs saved before that
add it before the norm instead); text tokens are also cross-attended from the middle block, as in
latent diffusion.
"""

from __future__ import annotations

from torch import Tensor, nn

from limner.nn import Attention2d, Downsample2d, EmbMode, GroupNorm2d, ResBlock2d, TokenContext

__all__ = ["CondResBlock", "Encoder", "MidBlock"]


# ---------------------------------------------------------------------------------------------
# Blocks shared with the decoder
# ---------------------------------------------------------------------------------------------


class CondResBlock(nn.Module):
    """``ResBlock2d`` whose second norm is modulated by a projection of the condition vector.

    Args:
        in_channels, out_channels: widths.
        cond_dim: width of the condition vector; 0 = unconditional (no projection).
        dropout: dropout inside the block.
        max_groups: group-norm groups.
        emb_mode: how the projection enters the block (``limner.nn.ResBlock2d``).
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, dropout: float,
                 max_groups: int, emb_mode: EmbMode = "scale_shift") -> None:
        super().__init__()
        self.block = ResBlock2d(in_channels, out_channels, dropout, max_groups,
                                emb_mode=emb_mode if cond_dim > 0 else None)
        self.cond_proj = nn.Linear(cond_dim, self.block.emb_width) if cond_dim else None

    def forward(self, x: Tensor, vector: Tensor | None) -> Tensor:
        """x [B, C_in, H, W], vector [B, D] (already SiLU-activated) or None → [B, C_out, H, W]."""
        shift = self.cond_proj(vector) if self.cond_proj is not None else None
        return self.block(x, shift)


class MidBlock(nn.Module):
    """Residual block, self-attention (+ cross-attention to text tokens), residual block.

    Args:
        channels: width C.
        cond_dim: condition vector width (0 = none).
        cross_dim: text token width for cross-attention (0 = none).
        head_dim, dropout, max_groups, emb_mode: as in the blocks above.
    """

    def __init__(self, channels: int, cond_dim: int, cross_dim: int, head_dim: int,
                 dropout: float, max_groups: int, emb_mode: EmbMode = "scale_shift") -> None:
        super().__init__()
        self.res1 = CondResBlock(channels, channels, cond_dim, dropout, max_groups, emb_mode)
        self.attn = Attention2d(channels, head_dim, cross_dim=cross_dim, max_groups=max_groups)
        self.res2 = CondResBlock(channels, channels, cond_dim, dropout, max_groups, emb_mode)

    def forward(self, x: Tensor, vector: Tensor | None, context: TokenContext | None) -> Tensor:
        """x [B, C, h, w] → [B, C, h, w]."""
        return self.res2(self.attn(self.res1(x, vector), context), vector)


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Images [B, C, H, W] → [B, out_channels, H/f, W/f] with f = 2 ** (len(widths) - 1).

    Args:
        in_channels: image channels.
        widths: width of each level, full resolution first.
        num_res_blocks: residual blocks per level.
        out_channels: 2 * latent channels (mean and log-variance) for the KL VAE, the code
            dimension for the VQ-VAE.
        cond_dim: condition vector width (0 = unconditional).
        cross_dim: text token width (0 = no cross-attention).
        head_dim: attention head width of the middle block.
        dropout: dropout inside residual blocks.
        max_groups: group-norm groups.
        emb_mode: how the condition vector enters the residual blocks (``CondResBlock``).
    """

    def __init__(self, in_channels: int, widths: list[int], num_res_blocks: int,
                 out_channels: int, cond_dim: int = 0, cross_dim: int = 0, head_dim: int = 32,
                 dropout: float = 0.0, max_groups: int = 32, emb_mode: EmbMode = "scale_shift") -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        width = widths[0]
        for level, level_width in enumerate(widths):
            stage = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.append(CondResBlock(width, level_width, cond_dim, dropout, max_groups, emb_mode))
                width = level_width
            self.blocks.append(stage)
            last = level == len(widths) - 1
            self.downs.append(nn.Identity() if last else Downsample2d(width))
        self.mid = MidBlock(width, cond_dim, cross_dim, head_dim, dropout, max_groups, emb_mode)
        self.norm_out = GroupNorm2d(width, max_groups)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x: Tensor, vector: Tensor | None = None,
                context: TokenContext | None = None) -> Tensor:
        """x [B, C, H, W] in [-1, 1] → [B, out_channels, h, w]."""
        h = self.conv_in(x)
        for stage, down in zip(self.blocks, self.downs):
            for block in stage:
                h = block(h, vector)
            h = down(h)
        h = self.mid(h, vector, context)
        return self.conv_out(self.norm_out(h))
