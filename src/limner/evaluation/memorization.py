"""Memorization check: nearest training neighbours of generated images and the near-copy share.

For every generated image we find its nearest training image in feature space and, when the
caller passes pixel vectors, in (downsampled) pixel space, and divide that distance by the
typical spacing of the training set itself:

    ratio = d_nn(gen) / median_i d_nn(train_i, train without i)

A ratio near 1 is what an independent sample from the training distribution looks like; a
ratio near 0 means the generated image sits far closer to one training image than training
images sit to each other, i.e. a (near-)copy.

Papers:

- Carlini et al. 2023, "Extracting Training Data from Diffusion Models": training images are
  regenerated near-verbatim; a generated image counts as extracted when its ℓ2 distance to a
  training image is small *relative to* distances to other training images, the idea the
  ratio here follows.
- Somepalli et al. 2023, "Diffusion Art or Digital Forgery? Investigating Data Replication in
  Diffusion Models": replication is found by nearest-neighbour search in a feature space,
  which is why the feature path is the primary one and pixels a cross-check.
- Meehan et al. 2020, "A Non-Parametric Test to Detect Data-Copying in Generative Models":
  compares generated-to-training nearest-neighbour distances against training-to-training
  (held-out) ones, the normalisation used by the ratio.

Default threshold 1/3: a ratio below 1/3 means the generated image is at least three times
closer to its training neighbour than a typical training image is to its own nearest
neighbour. Independent samples rarely get there (in high dimension nearest-neighbour distances
concentrate around the typical value), while copies, crops and light re-renderings do. It is a
heuristic cut, not a calibrated test: ``worst(n)`` is meant for looking at the images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from limner.evaluation.metrics import _as_features, _same_dim, knn_distances, nearest

__all__ = ["MemorizationResult", "memorization", "typical_nn_distance", "pixel_vectors"]

Layout = Literal["auto", "nhwc", "nchw"]


# ----------------------------------------------------------------------------------------------
# Result


@dataclass
class MemorizationResult:
    """Per generated sample [N] arrays plus the summary numbers they were judged by.

    Pixel fields are None when no pixel vectors were given.
    """

    nn_index_feature: np.ndarray            # int64 [N]: row of the nearest training image
    nn_dist_feature: np.ndarray             # float64 [N]: its euclidean feature distance
    ratio_feature: np.ndarray               # float64 [N]: nn_dist_feature / typical_dist_feature
    typical_dist_feature: float             # median train-to-other-train NN distance
    threshold: float                        # ratio below this is a near-copy
    near_copy_share_feature: float          # share of samples with ratio_feature < threshold
    nn_index_pixel: np.ndarray | None = None
    nn_dist_pixel: np.ndarray | None = None
    ratio_pixel: np.ndarray | None = None
    typical_dist_pixel: float | None = None
    near_copy_share_pixel: float | None = None

    def worst(self, n: int = 16) -> np.ndarray:
        """Indices of the n generated samples with the smallest feature ratio, smallest first."""
        return np.argsort(self.ratio_feature, kind="stable")[: max(n, 0)]

    def summary(self) -> dict:
        """JSON-serialisable summary (plain floats / ints, no arrays beyond the worst 16)."""
        def opt(x: float | None) -> float | None:
            return None if x is None else float(x)

        return {
            "num_generated": int(self.ratio_feature.shape[0]),
            "threshold": float(self.threshold),
            "typical_dist_feature": float(self.typical_dist_feature),
            "near_copy_share_feature": float(self.near_copy_share_feature),
            "median_ratio_feature": float(np.median(self.ratio_feature)),
            "typical_dist_pixel": opt(self.typical_dist_pixel),
            "near_copy_share_pixel": opt(self.near_copy_share_pixel),
            "median_ratio_pixel": None if self.ratio_pixel is None else float(np.median(self.ratio_pixel)),
            "worst": [int(i) for i in self.worst(16)],
        }


# ----------------------------------------------------------------------------------------------
# Computation


def typical_nn_distance(train: np.ndarray, *, max_reference: int = 2000, seed: int = 0) -> float:
    """Median over training rows of the distance to their nearest *other* training row.

    At most ``max_reference`` query rows are drawn (seeded); each is searched against the whole
    training set, so subsampling does not inflate the distance the way a sparser set would.

    Args:
        train: training features or pixel vectors [M, D], M >= 2.
    """
    m = train.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(m, max_reference, replace=False)) if m > max_reference else np.arange(m)
    return float(np.median(knn_distances(train[rows], train, 1, self_index=rows)))


def _ratio(d: np.ndarray, typical: float) -> np.ndarray:
    """d / typical; with typical == 0 (mostly duplicated training set) copies get 0, others inf."""
    if typical > 0:
        return d / typical
    return np.where(d == 0, 0.0, np.inf)


def _space(gen: np.ndarray, train: np.ndarray, threshold: float, seed: int, max_reference: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """(nn_index, nn_dist, ratio, typical, near_copy_share) in one space."""
    dist, index = nearest(gen, train)
    typical = typical_nn_distance(train, max_reference=max_reference, seed=seed)
    ratio = _ratio(dist, typical)
    return index, dist, ratio, typical, float((ratio < threshold).mean())


def memorization(gen_features: np.ndarray, train_features: np.ndarray, *,
                 gen_pixels: np.ndarray | None = None, train_pixels: np.ndarray | None = None,
                 threshold: float = 1 / 3, seed: int = 0, max_reference: int = 2000
                 ) -> MemorizationResult:
    """Nearest training neighbours of generated samples and the near-copy share.

    Args:
        gen_features: generated-image features [N, D].
        train_features: training-image features [M, D], M >= 2, same extractor.
        gen_pixels, train_pixels: optional pixel vectors [N, P] and [M, P] (see
            ``pixel_vectors``), rows aligned with the features; both or neither.
        threshold: ratio below which a sample counts as a near-copy (see module docstring).
        seed: seeds the training-row subsample of the typical distance.
        max_reference: at most this many training rows estimate the typical distance.
    """
    gen = _as_features(gen_features, "gen_features", "memorization", min_rows=1)
    train = _as_features(train_features, "train_features", "memorization", min_rows=2)
    _same_dim(gen, train, "gen_features", "train_features")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    if max_reference < 1:
        raise ValueError(f"max_reference must be >= 1, got {max_reference}")
    feat = _space(gen, train, threshold, seed, max_reference)
    pix = _pixel_space(gen_pixels, train_pixels, gen.shape[0], train.shape[0], threshold, seed, max_reference)
    names = ("nn_index", "nn_dist", "ratio", "typical_dist", "near_copy_share")
    fields = {f"{k}_feature": v for k, v in zip(names, feat)} | {f"{k}_pixel": v for k, v in zip(names, pix)}
    return MemorizationResult(threshold=float(threshold), **fields)


def _pixel_space(gen_pixels: np.ndarray | None, train_pixels: np.ndarray | None, n_gen: int,
                 n_train: int, threshold: float, seed: int, max_reference: int) -> tuple:
    """The pixel-space counterpart of ``_space``, or five Nones without pixels."""
    if gen_pixels is None and train_pixels is None:
        return (None,) * 5
    if gen_pixels is None or train_pixels is None:
        raise ValueError("pass both gen_pixels and train_pixels, or neither")
    gen = _as_features(gen_pixels, "gen_pixels", "memorization", min_rows=1)
    train = _as_features(train_pixels, "train_pixels", "memorization", min_rows=2)
    _same_dim(gen, train, "gen_pixels", "train_pixels")
    if gen.shape[0] != n_gen or train.shape[0] != n_train:
        raise ValueError(f"pixel rows ({gen.shape[0]}, {train.shape[0]}) must match feature rows "
                         f"({n_gen}, {n_train})")
    return _space(gen, train, threshold, seed, max_reference)


# ----------------------------------------------------------------------------------------------
# Pixel vectors


def _guess_layout(shape: tuple[int, ...], prefer: Literal["nhwc", "nchw"]) -> Literal["nhwc", "nchw"]:
    """Channels are the axis of size 1, 3 or 4; ``prefer`` breaks ties (e.g. 3x3 RGB images)."""
    last, second = shape[3] in (1, 3, 4), shape[1] in (1, 3, 4)
    if last and second:
        return prefer
    if not (last or second):
        raise ValueError(f"cannot tell the channel axis of images with shape {shape}; pass layout")
    return "nhwc" if last else "nchw"


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] area-resampling matrix: output cell i averages the input cells it overlaps.

    Output cell i spans [i, i + 1) · n_in / n_out in input coordinates; each input cell j
    ([j, j + 1)) is weighted by its overlap length, rows normalised to sum to 1.
    """
    edges = np.arange(n_out + 1) * (n_in / n_out)
    j = np.arange(n_in)
    overlap = np.minimum(edges[1:, None], j[None, :] + 1) - np.maximum(edges[:-1, None], j[None, :])
    w = np.clip(overlap, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def pixel_vectors(images: np.ndarray | torch.Tensor, size: int = 16, *, layout: Layout = "auto",
                  batch: int = 256) -> np.ndarray:
    """uint8 images -> area-downsampled pixel vectors in [0, 1], float64 [N, size * size * C].

    Args:
        images: uint8 [N, H, W, C] or [N, C, H, W], numpy or torch.
        size: output side length (square; non-square inputs are squashed).
        layout: "auto" finds the channel axis (size 1, 3 or 4); when both fit, numpy arrays are
            read as NHWC and tensors as NCHW, the layouts limner uses for each.
        batch: images resampled at a time (bounds the float64 working memory).
    """
    is_tensor = isinstance(images, torch.Tensor)
    x = images.detach().cpu().numpy() if is_tensor else np.asarray(images)
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, C] or [N, C, H, W], got {x.dtype} {x.shape}")
    if layout == "auto":
        layout = _guess_layout(x.shape, "nchw" if is_tensor else "nhwc")
    if layout == "nchw":
        x = x.transpose(0, 2, 3, 1)                                   # N, C, H, W -> N, H, W, C
    R_h, R_w = _area_weights(x.shape[1], size), _area_weights(x.shape[2], size)
    out = np.empty((x.shape[0], size * size * x.shape[3]))
    for start in range(0, x.shape[0], batch):
        blk = x[start:start + batch].astype(np.float64) / 255.0
        small = np.einsum("sh,nhwc,tw->nstc", R_h, blk, R_w, optimize=True)  # N, size, size, C
        out[start:start + batch] = small.reshape(small.shape[0], -1)
    return out
