"""Differentiable augmentation of everything the discriminator sees, with a fixed or adaptive
probability.

Sources:
- Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training" (DiffAugment,
  https://arxiv.org/abs/2006.10738): the same differentiable transforms are applied to real and
  generated images in both the D and the G step, so G is trained through them and D cannot
  memorise a few thousand images. Operations: "color" (brightness, saturation, contrast),
  "translation" (up to 1/8 of the side, zero padding), "cutout" (a square half the side).
- Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data" (ADA,
  https://arxiv.org/abs/2006.06676, §2-3): each transform is applied to an image with probability
  p, and p follows the overfitting heuristic r_t = E[sign(D(x_real))] toward a target (0.6).

All randomness comes from the generator passed in (the trainer's step generator), so a resumed
run draws exactly the same augmentations.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from limner.models.gan.config import AugmentOp


def _chosen(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """[n] bool: which images get a transform (each with probability p)."""
    return torch.rand(n, generator=generator, device=device) < p


def augment_color(x: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    """Brightness (+U[-0.5, 0.5]), saturation (x U[0, 2]) and contrast (x U[0.5, 1.5]), each
    applied to an image with probability p. x [B, C, H, W] in [-1, 1]."""
    B, device = x.shape[0], x.device
    r = torch.rand(3, B, 1, 1, 1, generator=generator, device=device)
    chosen = _chosen(3 * B, p, generator, device).view(3, B, 1, 1, 1)
    x = torch.where(chosen[0], x + (r[0] - 0.5), x)
    mean = x.mean(dim=1, keepdim=True)  # per-pixel grey level, [B, 1, H, W]
    x = torch.where(chosen[1], (x - mean) * (2 * r[1]) + mean, x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # per-image mean, [B, 1, 1, 1]
    return torch.where(chosen[2], (x - mean) * (r[2] + 0.5) + mean, x)


def augment_translation(x: Tensor, p: float, generator: torch.Generator | None,
                        ratio: float = 0.125) -> Tensor:
    """Shift each chosen image by up to ``ratio`` of its side in x and y, filling with zeros."""
    B, C, H, W = x.shape
    device = x.device
    sy, sx = int(H * ratio + 0.5), int(W * ratio + 0.5)
    ty = torch.randint(-sy, sy + 1, (B,), generator=generator, device=device)
    tx = torch.randint(-sx, sx + 1, (B,), generator=generator, device=device)
    chosen = _chosen(B, p, generator, device)
    ty, tx = ty * chosen, tx * chosen
    # Source pixel of every output pixel in the image padded by one zero pixel; out-of-range
    # sources clamp onto the padding.
    rows = (torch.arange(H, device=device) + ty[:, None] + 1).clamp(0, H + 1)  # [B, H]
    cols = (torch.arange(W, device=device) + tx[:, None] + 1).clamp(0, W + 1)  # [B, W]
    padded = F.pad(x, (1, 1, 1, 1))
    b = torch.arange(B, device=device)[:, None, None]
    out = padded[b, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def augment_cutout(x: Tensor, p: float, generator: torch.Generator | None,
                   ratio: float = 0.5) -> Tensor:
    """Zero a square of ``ratio`` times the side at a uniform centre (clipped at the border) in
    each chosen image."""
    B, C, H, W = x.shape
    device = x.device
    h, w = int(H * ratio + 0.5), int(W * ratio + 0.5)
    cy = torch.randint(0, H, (B,), generator=generator, device=device)
    cx = torch.randint(0, W, (B,), generator=generator, device=device)
    chosen = _chosen(B, p, generator, device)
    y0, x0 = (cy - h // 2)[:, None], (cx - w // 2)[:, None]
    rows, cols = torch.arange(H, device=device), torch.arange(W, device=device)
    in_rows = (rows >= y0) & (rows < y0 + h)  # [B, H]
    in_cols = (cols >= x0) & (cols < x0 + w)  # [B, W]
    hole = in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]  # [B, H, W]
    return x * (~hole)[:, None].to(x.dtype)


_OPS = {"color": augment_color, "translation": augment_translation, "cutout": augment_cutout}


class DiffAugment:
    """The configured operations, in order, each image-wise with probability p (a no-op that
    draws no random numbers when p = 0).

    Args:
        ops: subset of "color", "translation", "cutout".
    """

    def __init__(self, ops: Sequence[AugmentOp]) -> None:
        unknown = [op for op in ops if op not in _OPS]
        if unknown:
            raise ValueError(f"unknown augmentation(s): {unknown}")
        self.ops = list(ops)

    def __call__(self, x: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
        """Augment x [B, C, H, W]; differentiable with respect to x."""
        if p <= 0.0:
            return x
        for op in self.ops:
            x = _OPS[op](x, p, generator)
        return x


class AdaptiveProbability:
    """The augmentation probability p: fixed, or adjusted every ``interval`` steps by ADA's rule
    ``p += sign(r_t - target) * N / (kimg * 1000)``, where r_t = E[sign(D(x_real))] over the N
    real images seen since the last adjustment (all ranks together).

    Args:
        p: the fixed or starting probability.
        target: the target of r_t; None keeps p fixed.
        interval: steps between adjustments.
        kimg: thousands of real images over which p can move by 1.
    """

    def __init__(self, p: float, target: float | None, interval: int, kimg: float) -> None:
        self.p = float(p)
        self.target, self.interval, self.kimg = target, interval, kimg
        self.signs = 0.0  # sum of sign(D(x_real)) since the last adjustment (this rank)
        self.count = 0  # real images behind ``signs``

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    def observe(self, real_logits: Tensor) -> None:
        """Accumulate sign(D(x_real)) of a micro-batch, logits [B]."""
        if self.adaptive:
            self.signs += float(torch.sign(real_logits.detach().float()).sum())
            self.count += real_logits.numel()

    def end_step(self, steps_done: int) -> float | None:
        """After the ``steps_done``-th step: adjust p when due; returns r_t when it did."""
        if not self.adaptive or steps_done % self.interval:
            return None
        signs, count = _sum_over_ranks([self.signs, float(self.count)])
        self.signs, self.count = 0.0, 0
        if count <= 0:
            return None
        r_t = signs / count
        direction = (r_t > self.target) - (r_t < self.target)
        self.p = min(max(self.p + direction * count / (self.kimg * 1000.0), 0.0), 1.0)
        return r_t

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers (p and the partial r_t statistics) for the resumable state."""
        return {"p": self.p, "signs": self.signs, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = float(state["p"])
        self.signs = float(state["signs"])
        self.count = int(state["count"])


def _sum_over_ranks(values: list[float]) -> list[float]:
    """Sum plain numbers over the ranks of a running process group (as is, in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    on_cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()
