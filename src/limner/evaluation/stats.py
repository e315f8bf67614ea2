"""Reference statistics of a dataset under an extractor, computed once and cached.

FID needs the real set's feature mean and covariance; KID, precision/recall, density/coverage
and memorization need the real features themselves (or a seeded subsample of them), and the
pixel-space neighbour needs small pixel vectors. All of it depends only on (dataset content,
extractor identity, resolution), so it is computed once and kept as one ``.npz`` under
``<cache dir>/reference/`` (read with ``allow_pickle=False``), keyed by a sha256 of those three
plus ``STATS_VERSION`` and the subsample size. The key is also written into every result, so two
results can be checked to have used the same reference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from limner.data.cache import default_cache_dir
from limner.data.dataset import ImageDataset
from limner.evaluation.features import FeatureExtractor
from limner.evaluation.memorization import pixel_vectors
from limner.evaluation.metrics import feature_stats
from limner.fsutil import atomic_write

log = logging.getLogger(__name__)

STATS_VERSION = 1
MAX_REFERENCE_FEATURES = 10_000  # rows kept for k-NN metrics and memorization

__all__ = ["ReferenceStats", "reference_stats", "reference_key"]


@dataclass
class ReferenceStats:
    """What the metrics need to know about the real data.

    Attributes:
        mu, sigma:  float64 [D], [D, D] over all N real images.
        features:   float64 [M, D], M = min(N, max_features) rows (seeded subsample).
        indices:    int64 [M], which dataset rows ``features`` came from (for memorization sheets).
        pixels:     float32 [M, P] pixel vectors of the same rows (pixel-space neighbours).
        count:      N, the number of real images behind mu and sigma.
        key:        the cache key (sha256 hex).
        extractor_id, dataset_hash: what it was computed from.
    """

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    indices: np.ndarray
    pixels: np.ndarray
    count: int
    key: str
    extractor_id: str
    dataset_hash: str

    def describe(self) -> dict:
        return {"key": self.key, "count": self.count, "knn_rows": int(len(self.indices)),
                "extractor": self.extractor_id, "dataset_hash": self.dataset_hash}


def reference_key(dataset: ImageDataset, extractor: FeatureExtractor, max_features: int) -> str:
    """sha256 over (STATS_VERSION, dataset content hash, extractor id, resolution, subsample)."""
    spec = {"version": STATS_VERSION, "dataset": dataset.content_hash, "extractor": extractor.extractor_id,
            "resolution": dataset.resolution, "channels": dataset.channels, "max_features": max_features}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def reference_stats(dataset: ImageDataset, extractor: FeatureExtractor, *, cache_dir: str | os.PathLike | None = None,
                    max_features: int = MAX_REFERENCE_FEATURES, batch_size: int = 256) -> ReferenceStats:
    """Load the cached reference for (dataset, extractor), computing and caching it on a miss."""
    key = reference_key(dataset, extractor, max_features)
    path = _cache_file(cache_dir, key)
    cached = _load(path, key)
    if cached is not None:
        return cached
    log.info("computing reference statistics for %d images with %s", len(dataset), extractor.extractor_id)
    stats = _compute(dataset, extractor, key, max_features, batch_size)
    _save(path, stats)
    return stats


def _compute(dataset: ImageDataset, extractor: FeatureExtractor, key: str, max_features: int,
             batch_size: int) -> ReferenceStats:
    features = extractor.features(dataset.images, batch_size=batch_size)
    mu, sigma = feature_stats(features)
    rng = np.random.default_rng(0)
    n = len(dataset)
    indices = np.sort(rng.choice(n, size=max_features, replace=False)) if n > max_features else np.arange(n)
    return ReferenceStats(mu=mu, sigma=sigma, features=features[indices], indices=indices.astype(np.int64),
                          pixels=pixel_vectors(dataset.images[indices], layout="nhwc").astype(np.float32), count=n, key=key,
                          extractor_id=extractor.extractor_id, dataset_hash=dataset.content_hash)


def _cache_file(cache_dir: str | os.PathLike | None, key: str) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "reference" / f"{key}.npz"


_ARRAYS = ("mu", "sigma", "features", "indices", "pixels")


def _save(path: Path, stats: ReferenceStats) -> None:
    meta = json.dumps({"count": stats.count, "key": stats.key, "extractor_id": stats.extractor_id,
                       "dataset_hash": stats.dataset_hash}).encode()
    arrays = {k: getattr(stats, k) for k in _ARRAYS}
    try:
        atomic_write(path, lambda f: np.savez(f, meta=np.frombuffer(meta, dtype=np.uint8), **arrays), fsync=False)
    except OSError as e:  # a read-only cache must not fail the evaluation
        log.warning("could not cache reference statistics at %s: %s", path, e)


def _load(path: Path, key: str) -> ReferenceStats | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            arrays = {k: data[k] for k in _ARRAYS}
        if meta["key"] != key:
            raise ValueError("key mismatch")
        return ReferenceStats(**arrays, count=int(meta["count"]), key=key, extractor_id=meta["extractor_id"],
                              dataset_hash=meta["dataset_hash"])
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable reference cache %s (%s); recomputing", path, e)
        return None
