"""The batch every family's training step receives from the trainer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """One (micro-)batch of training data.

    Attributes:
        images:   [B, C, H, W] float32 in [-1, 1] on the training device.
        indices:  [B] int64 dataset indices (for sample accounting across resumes).
        captions: B captions, or None when the dataset has none.
        labels:   [B] int64 class ids, or None.
    """

    images: Tensor
    indices: Tensor
    captions: list[str] | None = None
    labels: Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def split(self, parts: int) -> list["Batch"]:
        """Split into ``parts`` micro-batches of (nearly) equal size, in order."""
        n = len(self)
        bounds = [round(i * n / parts) for i in range(parts + 1)]
        out = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b > a:
                out.append(
                    Batch(
                        images=self.images[a:b],
                        indices=self.indices[a:b],
                        captions=self.captions[a:b] if self.captions is not None else None,
                        labels=self.labels[a:b] if self.labels is not None else None,
                    )
                )
        return out

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            images=self.images.to(device, non_blocking=True),
            indices=self.indices,
            captions=self.captions,
            labels=self.labels.to(device) if self.labels is not None else None,
        )
