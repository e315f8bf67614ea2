"""Pre-activation residual block with a noise-embedding shift (Ho et al. 2020 U-Net block).

GroupNorm → SiLU → conv3x3 → (+ embedding shift) → GroupNorm → SiLU → dropout → conv3x3, plus a
1x1 convolution on the skip path when the width changes (He et al. 2016 pre-activation ordering;
Ho et al. 2020, https://arxiv.org/abs/2006.11239; Dhariwal & Nichol 2021 zero-initialise the last
convolution so that a new block is the identity).

The shift [B, C_out] is computed by the caller (one projection of the noise embedding for all
blocks) and folded into the second norm (:func:`limner.nn.norms.group_norm_act`). The first
convolution then has no bias: a constant added before the shift would be the same parameter twice.
"""

from __future__ import annotations

from torch import Tensor, nn

from limner.nn.norms import GroupNorm2d

__all__ = ["ResBlock2d"]


class ResBlock2d(nn.Module):
    """Residual block; see the module docstring.

    Args:
        in_channels, out_channels: widths.
        dropout: dropout probability before the second convolution.
        max_groups: group-norm groups (see :class:`GroupNorm2d`).
        shifted: the block receives a [B, out_channels] shift in ``forward``; False gives the
            first convolution its own bias instead.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0,
                 max_groups: int = 32, shifted: bool = True) -> None:
        super().__init__()
        self.norm1 = GroupNorm2d(in_channels, max_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not shifted)
        self.norm2 = GroupNorm2d(out_channels, max_groups)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, shift: Tensor | None = None) -> Tensor:
        """x [B, C_in, H, W], shift [B, C_out] or None → [B, C_out, H, W]."""
        h = self.conv1(self.norm1(x))
        h = self.conv2(self.dropout(self.norm2(h, shift)))
        # conv2's output is not saved for its backward, so the residual sum can reuse it.
        return h.add_(x if self.skip is None else self.skip(x))
