"""The VAE's convolutional decoder: latents [B, C_z, h, w] → images [B, C, H, W].

The mirror of ``encoder.py`` (VQGAN / latent-diffusion autoencoder layout, Esser et al. 2021,
https://arxiv.org/abs/2012.09841): a convolution from the latent, the middle block, then from the
lowest resolution up ``num_res_blocks + 1`` residual blocks per level with nearest-x2 upsampling
and a convolution between levels, and GroupNorm-SiLU plus a convolution to the image channels.
The output is not squashed: reconstructions live in [-1, 1] by training, and images are clamped
only when they are turned into pixels. As a conditional VAE's p(x | z, c) (Sohn et al. 2015) its
blocks take the same condition vector and text tokens as the encoder's.
"""

from __future__ import annotations

from torch import Tensor, nn

from limner.models.vae.encoder import CondResBlock, MidBlock
from limner.nn import EmbMode, GroupNorm2d, TokenContext, Upsample2d

__all__ = ["Decoder"]


class Decoder(nn.Module):
    """Latents [B, latent_channels, h, w] → images [B, out_channels, h*f, w*f].

    Args:
        out_channels: image channels.
        widths: width of each level, full resolution first (as the encoder's).
        num_res_blocks: the encoder's blocks per level; the decoder has one more per level.
        latent_channels: channels of z (KL) or code dimension (VQ).
        cond_dim: condition vector width (0 = unconditional).
        cross_dim: text token width (0 = no cross-attention).
        head_dim: attention head width of the middle block.
        dropout: dropout inside residual blocks.
        max_groups: group-norm groups.
        emb_mode: how the condition vector enters the residual blocks (``CondResBlock``).
    """

    def __init__(self, out_channels: int, widths: list[int], num_res_blocks: int,
                 latent_channels: int, cond_dim: int = 0, cross_dim: int = 0, head_dim: int = 32,
                 dropout: float = 0.0, max_groups: int = 32, emb_mode: EmbMode = "scale_shift") -> None:
        super().__init__()
        width = widths[-1]
        self.conv_in = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.mid = MidBlock(width, cond_dim, cross_dim, head_dim, dropout, max_groups, emb_mode)
        self.blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        for level in reversed(range(len(widths))):
            stage = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.append(CondResBlock(width, widths[level], cond_dim, dropout, max_groups, emb_mode))
                width = widths[level]
            self.blocks.append(stage)
            self.ups.append(Upsample2d(width) if level > 0 else nn.Identity())
        self.norm_out = GroupNorm2d(width, max_groups)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, z: Tensor, vector: Tensor | None = None,
                context: TokenContext | None = None) -> Tensor:
        """z [B, C_z, h, w] → [B, C, H, W] (unclamped, ~[-1, 1])."""
        h = self.mid(self.conv_in(z), vector, context)
        for stage, up in zip(self.blocks, self.ups):
            for block in stage:
                h = block(h, vector)
            h = up(h)
        return self.conv_out(self.norm_out(h))
