"""Resolution changes between U-Net levels: strided-convolution down, nearest+convolution up.

Both are the learned resamplers of Ho et al. (2020, https://arxiv.org/abs/2006.11239).

:class:`Upsample2d` computes "nearest x2, then conv3x3" without building the upsampled image.
After a nearest upsample, the 3x3 window around each output pixel covers only 2x2 input pixels,
so each output pixel is a 2x2 convolution of the input whose taps are sums of the 3x3 taps (the
sub-pixel view of Shi et al. 2016, https://arxiv.org/abs/1609.05158). All four output phases
together are one stride-2 transposed convolution with a 4x4 kernel: per row, the taps
(w0, w1, w2) become (w2, w1 + w2, w0 + w1, w0). That needs 16/36 of the multiply-adds, oneDNN
interleaves the phases itself, and the parameters and the result are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from limner.nn.conv import Conv2d, DerivedWeight

__all__ = ["Downsample2d", "Upsample2d"]

# _TRANSPOSED_TAPS[k][t]: weight of 3x3 tap t in tap k of the equivalent 4x4 transposed kernel.
_TRANSPOSED_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


class Downsample2d(nn.Module):
    """3x3 convolution with stride 2: [B, C, H, W] → [B, C, H/2, W/2]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample2d(nn.Module):
    """Nearest-neighbour x2 then 3x3 convolution: [B, C, H, W] → [B, C, 2H, 2W].

    ``fast`` (runtime only, not saved) selects the transposed-convolution form described in the
    module docstring; False runs the two operations literally. With gradients off, the 4x4
    kernel is kept until the 3x3 weight changes (a sampler reuses it every step).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)
        self.fast = True
        self._kernel = DerivedWeight()  # the 4x4 kernel, while conv.weight is unchanged

    def forward(self, x: Tensor) -> Tensor:
        if not self.fast:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return F.conv_transpose2d(x, self._transposed(), self.conv.bias, stride=2, padding=1)

    def train(self, mode: bool = True) -> "Upsample2d":
        if mode:
            self._kernel.clear()
        return super().train(mode)

    def _transposed(self) -> Tensor:
        w = self.conv.weight
        if torch.is_grad_enabled() or w.is_inference():
            return _transposed_weight(w)
        return self._kernel.get(w, (w.device,), lambda: _transposed_weight(w))


def _transposed_weight(weight: Tensor) -> Tensor:
    """conv3x3 weight [O, I, 3, 3] → [I, O, 4, 4] for ``conv_transpose2d(stride=2, padding=1)``."""
    O, I = weight.shape[:2]
    # In the weight's own dtype even under autocast (which would round the tap sums to bfloat16);
    # the convolution casts the result like any weight.
    with torch.autocast(weight.device.type, enabled=False):
        taps = torch.tensor(_TRANSPOSED_TAPS, dtype=weight.dtype, device=weight.device)  # [k, t]
        mix = torch.einsum("kt,lu->tukl", taps, taps).reshape(9, 16)  # (t, u) → (k, l)
        return (weight.reshape(O * I, 9) @ mix).view(O, I, 4, 4).transpose(0, 1)
