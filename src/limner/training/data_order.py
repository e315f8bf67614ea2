"""Deterministic, resumable batching from an in-memory uint8 image array.

Datasets are cached arrays, so the trainer builds batches itself instead of running DataLoader
workers. The index stream is the concatenation of one seeded permutation per epoch
(``numpy.random.default_rng([seed, epoch])``); a step takes the next ``batch_size`` indices and
crosses epoch boundaries seamlessly, so within every epoch each image is seen exactly once (no
drop-last loss, and datasets smaller than a batch work). The whole state is
``(seed, epoch, position)``, which makes resume exact, mid-epoch included (the idea of
accelerate's ``skip_first_batches``, without replaying the skipped batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from limner.data.batch import Batch
from limner.errors import DataError, UsageError


@runtime_checkable
class TrainData(Protocol):
    """What the trainer needs from a dataset (``limner.data.dataset.ImageDataset`` fits).

    Attributes:
        images:   [N, H, W, C] uint8.
        captions: N captions, or None.
        labels:   [N] integer class ids, or None.
    """

    images: np.ndarray
    captions: list[str] | None
    labels: np.ndarray | None


def check_train_data(data: TrainData) -> None:
    """Raise DataError unless ``data`` has a non-empty [N, H, W, C] uint8 array and matching
    captions/labels."""
    images = getattr(data, "images", None)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise DataError("training data must hold images as a uint8 array of shape [N, H, W, C]")
    n = images.shape[0]
    if n == 0:
        raise DataError("training data holds no images")
    captions = getattr(data, "captions", None)
    if captions is not None and len(captions) != n:
        raise DataError(f"training data has {len(captions)} captions for {n} images")
    labels = getattr(data, "labels", None)
    if labels is not None and len(labels) != n:
        raise DataError(f"training data has {len(labels)} labels for {n} images")


@dataclass
class DataOrder:
    """Seeded per-epoch permutations (and optional flip masks) read as one endless stream."""

    size: int
    seed: int
    hflip: bool = False
    epoch: int = 0
    position: int = 0

    def __post_init__(self) -> None:
        self._plan_epoch: int | None = None
        self._perm = np.empty(0, dtype=np.int64)
        self._flips = np.empty(0, dtype=bool)

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The permutation and flip mask of ``epoch`` (a pure function of seed and epoch)."""
        if self._plan_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.size).astype(np.int64)
            self._flips = rng.random(self.size) < 0.5 if self.hflip else np.zeros(self.size, bool)
            self._plan_epoch = epoch
        return self._perm, self._flips

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``count`` indices and their flip flags, advancing the position."""
        indices, flips = [], []
        while count > 0:
            perm, flip = self._plan(self.epoch)
            n = min(count, self.size - self.position)
            indices.append(perm[self.position : self.position + n])
            flips.append(flip[self.position : self.position + n])
            self.position += n
            count -= n
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
        return np.concatenate(indices), np.concatenate(flips)

    def state_dict(self) -> dict[str, Any]:
        """Plain-int state for checkpoints."""
        return {"size": self.size, "seed": self.seed, "hflip": self.hflip,
                "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore; refuses a checkpoint made with a different dataset size, seed or flips."""
        for key in ("size", "seed", "hflip"):
            if state[key] != getattr(self, key):
                raise UsageError(
                    f"data order changed since the checkpoint: {key} was {state[key]!r}, "
                    f"now {getattr(self, key)!r} (the dataset or seed differs)"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def make_batch(data: TrainData, indices: np.ndarray, flips: np.ndarray) -> Batch:
    """Gather ``indices`` into a CPU Batch: images [B, C, H, W] float32 in [-1, 1]."""
    pixels = torch.from_numpy(np.ascontiguousarray(data.images[indices]))  # B, H, W, C uint8
    images = pixels.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # B, C, H, W
    if flips.any():
        mask = torch.from_numpy(flips)
        images[mask] = images[mask].flip(-1)
    captions = [data.captions[i] for i in indices.tolist()] if data.captions is not None else None
    labels = None
    if data.labels is not None:
        labels = torch.as_tensor(np.asarray(data.labels)[indices], dtype=torch.int64)
    return Batch(images=images.contiguous(), indices=torch.from_numpy(indices.copy()),
                 captions=captions, labels=labels)


def rank_slice(indices: np.ndarray, flips: np.ndarray, rank: int, world_size: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """This rank's contiguous share of a global batch (sizes already checked divisible)."""
    per = len(indices) // world_size
    return indices[rank * per : (rank + 1) * per], flips[rank * per : (rank + 1) * per]
