"""Pre-activation residual block conditioned on an embedding (the diffusion U-Net block).

GroupNorm → SiLU → conv3x3 → GroupNorm modulated by the embedding → SiLU → dropout → conv3x3,
plus a 1x1 convolution on the skip path when the width changes (He et al. 2016 pre-activation
ordering; Dhariwal & Nichol 2021, https://arxiv.org/abs/2105.05233, zero-initialise the last
convolution so that a new block is the identity).

The caller computes each block's embedding projection (one matrix product for all blocks). Two
ways to apply it, ``emb_mode``:

- ``"scale_shift"``: adaptive group norm, ``GroupNorm(h) * (1 + scale) + shift`` with [B, 2 C_out]
  split into scale and shift (Dhariwal & Nichol 2021, "AdaGN"). The default.
- ``"shift"``: ``GroupNorm(h + shift)`` with a [B, C_out] shift (Ho et al. 2020,
  https://arxiv.org/abs/2006.11239). The norm removes a per-channel constant within each group,
  so where a group holds one channel the embedding does not reach the block at all; kept so
  that runs made with it still load. The first convolution then has no bias (a constant added
  before the shift would be the same parameter twice).
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor, nn

from limner.nn.conv import Conv2d
from limner.nn.norms import GroupNorm2d

__all__ = ["EmbMode", "ResBlock2d"]

EmbMode = Literal["scale_shift", "shift"]


class ResBlock2d(nn.Module):
    """Residual block; see the module docstring.

    Args:
        in_channels, out_channels: widths.
        dropout: dropout probability before the second convolution.
        max_groups: group-norm groups (see :class:`GroupNorm2d`).
        emb_mode: how ``forward``'s embedding is applied (module docstring): "scale_shift"
            ([B, 2 * out_channels]), "shift" ([B, out_channels]), or None for a block without one.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0,
                 max_groups: int = 32, emb_mode: EmbMode | None = "scale_shift") -> None:
        super().__init__()
        if emb_mode not in (*get_args(EmbMode), None):
            raise ValueError(f"emb_mode must be one of {get_args(EmbMode)} or None, got {emb_mode!r}")
        self.emb_mode = emb_mode
        self.norm1 = GroupNorm2d(in_channels, max_groups)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, bias=emb_mode != "shift")
        self.norm2 = GroupNorm2d(out_channels, max_groups)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    @property
    def emb_width(self) -> int:
        """Width of the embedding projection ``forward`` expects (0 without one)."""
        return {"scale_shift": 2, "shift": 1, None: 0}[self.emb_mode] * self.conv2.out_channels

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """x [B, C_in, H, W], emb [B, emb_width] (or None) → [B, C_out, H, W]."""
        h = self.conv1(self.norm1(x))
        if self.emb_mode == "scale_shift" and emb is not None:
            scale, shift = emb.chunk(2, dim=1)
            h = self.norm2.modulated(h, scale, shift)
        else:
            h = self.norm2(h, emb)
        h = self.conv2(self.dropout(h))
        # conv2's output is not saved for its backward, so the residual sum can reuse it.
        return h.add_(x if self.skip is None else self.skip(x))
