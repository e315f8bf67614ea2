"""Resolution changes between U-Net levels: strided-convolution down, nearest+convolution up.

Both are the learned resamplers of Ho et al. (2020, https://arxiv.org/abs/2006.11239).

:class:`Upsample2d` computes "nearest x2, then conv3x3" without building the upsampled image.
After a nearest upsample, the 3x3 window around each output pixel covers only 2x2 input pixels,
so each of the four output phases (row, column parity) is a 2x2 convolution of the input whose
taps are sums of the 3x3 taps (the sub-pixel convolution view of Shi et al. 2016,
https://arxiv.org/abs/1609.05158). Running the four phases as one 2x2 convolution with 4x the
output channels needs 16/36 of the multiply-adds; the parameters and the result are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Downsample2d", "Upsample2d"]

# _PHASE_TAPS[p, a, t]: 3x3 tap t of an output pixel with parity p reads the a-th of the two
# input pixels it covers (p = 0: input rows i-1, i; p = 1: rows i, i+1).
_PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


class Downsample2d(nn.Module):
    """3x3 convolution with stride 2: [B, C, H, W] → [B, C, H/2, W/2]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample2d(nn.Module):
    """Nearest-neighbour x2 then 3x3 convolution: [B, C, H, W] → [B, C, 2H, 2W].

    ``fast`` (runtime only, not saved) selects the sub-pixel form described in the module
    docstring; False runs the two operations literally.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.fast = True

    def forward(self, x: Tensor) -> Tensor:
        if not self.fast:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return _subpixel_upsample_conv(x, self.conv.weight, self.conv.bias)


def _phase_weights(weight: Tensor) -> Tensor:
    """[O, I, 3, 3] → [4*O, I, 2, 2], output channels ordered (row parity, column parity, O)."""
    O, I = weight.shape[:2]
    taps = torch.tensor(_PHASE_TAPS, dtype=weight.dtype, device=weight.device)  # [p, a, t]
    mix = torch.einsum("pat,qbu->tupqab", taps, taps).reshape(9, 16)  # 3x3 taps → 4 phases x 2x2
    w = (weight.reshape(O * I, 9) @ mix).view(O, I, 2, 2, 2, 2)  # O, I, py, px, a, b
    return w.permute(2, 3, 0, 1, 4, 5).reshape(4 * O, I, 2, 2)


def _subpixel_upsample_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """conv3x3(nearest_x2(x)) as one 2x2 convolution over 4 phases, then interleave."""
    B, C, H, W = x.shape
    O = weight.shape[0]
    y = F.conv2d(F.pad(x, (1, 1, 1, 1)), _phase_weights(weight), None if bias is None else bias.repeat(4))
    y = y.permute(0, 2, 3, 1).reshape(B, H + 1, W + 1, 2, 2, O)  # B, H+1, W+1, py, px, O
    # out[b, 2i + py, 2j + px] = y[b, i + py, j + px, py, px]; rows then columns interleaved.
    rows = [torch.stack([y[:, py:py + H, px:px + W, py, px] for px in (0, 1)], dim=3) for py in (0, 1)]
    out = torch.stack(rows, dim=2)  # [B, H, 2, W, 2, O]
    return out.reshape(B, 2 * H, 2 * W, O).permute(0, 3, 1, 2)  # channels-last [B, O, 2H, 2W]
