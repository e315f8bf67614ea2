"""The small convolutional image encoder behind every extractor limner trains.

A pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks") sized
for 28-64 px images: a stem, ``len(widths)`` stages of two residual blocks, each stage after
the first halving the resolution, then global average pooling and a linear projection to
``dim``. GroupNorm instead of BatchNorm so that features do not depend on batch composition
(a generated batch and a real batch must be embedded by the same function).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from limner.nn.norms import num_groups

__all__ = ["ImageEncoder", "ImageEncoderConfig"]


@dataclass(frozen=True)
class ImageEncoderConfig:
    channels: int = 3               # input channels (1 or 3)
    resolution: int = 32            # images are resized to this side before the network
    widths: tuple[int, ...] = (32, 64, 128)
    dim: int = 128                  # output feature size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ImageEncoderConfig":
        return cls(**{**d, "widths": tuple(d["widths"])})


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(num_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.skip = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.norm1(x))
        skip = x if self.skip is None else self.skip(h)
        h = self.conv1(h)
        h = self.conv2(F.silu(self.norm2(h)))
        return skip + h


class ImageEncoder(nn.Module):
    """float images in [-1, 1], [B, C, R, R] -> features [B, dim] (before any head)."""

    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = nn.Conv2d(config.channels, w[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, width in enumerate(w):
            cin = w[max(i - 1, 0)]
            blocks += [_Block(cin, width, stride=1 if i == 0 else 2), _Block(width, width, 1)]
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.GroupNorm(num_groups(w[-1]), w[-1])
        self.proj = nn.Linear(w[-1], config.dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.stem(x))
        h = F.silu(self.norm(h)).mean(dim=(2, 3))  # [B, C]
        return self.proj(h)

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 [B, C', H, W] -> float [B, C, R, R] in [-1, 1]: channel match, then area/bilinear resize."""
        x = images.float() / 127.5 - 1.0
        c = self.config.channels
        if x.shape[1] == 3 and c == 1:
            x = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        elif x.shape[1] == 1 and c == 3:
            x = x.expand(-1, 3, -1, -1)
        r = self.config.resolution
        if x.shape[-1] != r or x.shape[-2] != r:
            mode = "area" if x.shape[-1] > r else "bilinear"
            x = F.interpolate(x, size=(r, r), mode=mode, **({} if mode == "area" else {"align_corners": False}))
        return x
