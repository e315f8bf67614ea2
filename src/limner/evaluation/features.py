"""The feature-extractor contract every metric reads through.

A metric is only comparable between two results when both used the same extractor, so every
extractor carries an identity that goes into every result and every cached reference:
``name`` (what it is), ``version`` (bumped when preprocessing or architecture changes) and
``digest`` (sha256 of the weights file it was loaded from). ``extractor_id`` joins them.

Images enter as uint8 ``[N, H, W, C]`` numpy arrays (the layout of ``ImageDataset.images``) or
uint8 ``[N, C, H, W]`` tensors (the layout of ``GenerationOutput.images``); each extractor does
its own resizing and normalisation, documented on the class, so callers never preprocess.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

__all__ = ["FeatureExtractor", "as_nchw_uint8"]


def as_nchw_uint8(images: np.ndarray | Tensor) -> Tensor:
    """uint8 [N, H, W, C] numpy or uint8 [N, C, H, W] tensor -> uint8 [N, C, H, W] CPU tensor."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 [N, H, W, C] images, got {images.dtype} {images.shape}")
        # a copy: dataset arrays may be read-only memory maps, which torch refuses to wrap
        return torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2)
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 [N, C, H, W] images, got {images.dtype} {tuple(images.shape)}")
    return images.cpu()


class FeatureExtractor(ABC):
    """Maps images to feature vectors (float64 [N, D]) and, for classifiers, to class logits.

    Subclasses set ``name``, ``version``, ``digest``, ``dim`` and ``num_classes`` (0 when the
    extractor has no classifier head, which makes the Inception Score unavailable).
    """

    name: str
    version: str
    digest: str
    dim: int
    num_classes: int = 0

    @property
    def extractor_id(self) -> str:
        """``name-vVERSION-DIGEST12``: the identity written into results and cache keys."""
        return f"{self.name}-v{self.version}-{self.digest[:12]}"

    @abstractmethod
    def _forward(self, batch: Tensor) -> tuple[Tensor, Tensor | None]:
        """uint8 [B, C, H, W] -> (features float [B, D], logits float [B, K] or None)."""

    def features(self, images: np.ndarray | Tensor, batch_size: int = 256) -> np.ndarray:
        """Feature vectors, float64 [N, D]."""
        return self._run(images, batch_size)[0]

    def logits(self, images: np.ndarray | Tensor, batch_size: int = 256) -> np.ndarray:
        """Class logits, float64 [N, K]; raises for an extractor without a classifier head."""
        if not self.num_classes:
            raise ValueError(f"extractor {self.extractor_id} has no classifier head")
        return self._run(images, batch_size)[1]

    def features_and_logits(self, images: np.ndarray | Tensor, batch_size: int = 256
                            ) -> tuple[np.ndarray, np.ndarray | None]:
        """Both in one pass (logits None without a classifier head)."""
        return self._run(images, batch_size)

    @torch.inference_mode()
    def _run(self, images: np.ndarray | Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
        x = as_nchw_uint8(images)
        feats, logits = [], []
        for start in range(0, x.shape[0], batch_size):
            f, l = self._forward(x[start:start + batch_size])
            feats.append(f.double().cpu().numpy())
            if l is not None:
                logits.append(l.double().cpu().numpy())
        dim_logits = self.num_classes if self.num_classes else 0
        f_all = np.concatenate(feats) if feats else np.zeros((0, self.dim))
        if not self.num_classes:
            return f_all, None
        return f_all, (np.concatenate(logits) if logits else np.zeros((0, dim_logits)))
