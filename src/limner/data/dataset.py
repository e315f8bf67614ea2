"""The in-memory training dataset: decoded, resized uint8 images with captions or labels.

``load_dataset`` = ``scan_source`` (sources.py: what the path holds) -> content digests ->
cache lookup (cache.py) -> on a miss, ``decode_file`` + ``resize_center_crop`` for every item
-> ``ImageDataset``. Every image is decoded once, up front, so a bad file is met at load time
and skipped with its path and reason (RELIABILITY.md A1, A16-A18): training then reads only the
in-memory array and can never die hours in on a file (stylegan2-pytorch#7). ``check.py`` uses
the same ``decode_file`` so that ``limner data check`` accepts exactly what the loader accepts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from limner.data import cache
from limner.data.arrays import ArraySource
from limner.data.decode import decode_image, read_image_file
from limner.data.display import escape_path
from limner.data.sources import UNLISTED_SHOWN, FileItem, FolderSource, SkippedFile, scan_source, unlisted_summary
from limner.data.transforms import fit_array, resize_center_crop
from limner.errors import DataError, ImageDecodeError, UsageError

log = logging.getLogger(__name__)

WHITE = (255, 255, 255)
MAX_RESOLUTION = 4096

__all__ = ["ImageDataset", "SkippedFile", "decode_file", "load_dataset"]


@dataclass
class ImageDataset:
    """Decoded training images and what goes with them.

    Attributes:
        images:       uint8 [N, H, W, C], H = W = resolution, C = channels (1 or 3).
        captions:     N captions ("" = uncaptioned), or None when the source has none.
        labels:       int64 [N] class ids, or None.
        class_names:  names for the label ids, or None.
        paths:        source of each row (a file path, or "file.npz#i").
        skipped:      files not used, with the reason.
        content_hash: sha256 hex of the source content, captions/labels and decode settings.
        resolution:   side of every image in pixels.
        channels:     1 or 3.
        source_kind:  "imagefolder" | "captions" | "classes" | "plain" | "idx" | "npz".
    """

    images: np.ndarray
    captions: list[str] | None
    labels: np.ndarray | None
    class_names: list[str] | None
    paths: list[str]
    skipped: list[SkippedFile]
    content_hash: str
    resolution: int
    channels: int
    source_kind: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_dataset(
    path: str | os.PathLike,
    resolution: int,
    *,
    channels: Literal[1, 3] | None = None,
    background: tuple[int, int, int] = WHITE,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> ImageDataset:
    """Load a dataset folder/IDX/npz as uint8 [N, resolution, resolution, C], cached on disk.

    Args:
        path: a folder (imagefolder, sidecar captions, class folders or plain), an IDX images
            file or folder, or an .npz file (rules in ``limner.data.sources``).
        resolution: output side in pixels (``limner.data.transforms`` policy).
        channels: 1 or 3; None = 1 for single-channel array sources, 3 otherwise.
        background: RGB colour transparent pixels are composited on.
        cache_dir: folder for the decoded-array cache (default: ``cache.default_cache_dir()``).
        progress: show a tqdm bar on stderr while decoding.
        limit: use only the first ``limit`` items (sorted order), e.g. for quick tests.
    Raises:
        DataError: nothing usable ("0 of N files decodable in DIR; first 5 errors: ...").
        UsageError: bad arguments or a missing path.
    """
    _check_args(resolution, channels, background, limit)
    background = tuple(int(c) for c in background)
    src = scan_source(path, limit=limit)
    if isinstance(src, ArraySource):
        return _load_arrays(src, resolution, channels, background, cache_dir, progress)
    return _load_folder(src, resolution, channels or 3, background, cache_dir, progress)


def decode_file(
    path: str, *, mode: Literal["RGB", "L"] = "RGB", background: tuple[int, int, int] = WHITE
) -> tuple[Image.Image | None, str, str]:
    """Read and decode one dataset file: (image or None, sha256 of its bytes, reason if refused).

    This is the acceptance rule shared by ``load_dataset`` and ``check_dataset``.
    """
    try:
        data = read_image_file(path)
    except ImageDecodeError as e:
        return None, _item_digest(path), e.reason
    digest = hashlib.sha256(data).hexdigest()
    try:
        return decode_image(data, mode=mode, background=background, name=path), digest, ""
    except ImageDecodeError as e:
        return None, digest, e.reason


def _item_digest(path: str) -> str:
    """Content digest of a dataset file, or a stable marker when it cannot be read."""
    try:
        return cache.file_digest(path)
    except OSError as e:
        return f"unreadable:{e.strerror or type(e).__name__}"


def _check_args(resolution: int, channels: int | None, background: tuple, limit: int | None) -> None:
    """UsageError for arguments outside the documented ranges."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 0 < resolution <= MAX_RESOLUTION:
        raise UsageError(f"resolution must be an integer in 1..{MAX_RESOLUTION}, got {resolution!r}")
    if channels not in (None, 1, 3):
        raise UsageError(f"channels must be 1, 3 or None (auto), got {channels!r}")
    if len(background) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in background):
        raise UsageError(f"background must be three integers in 0..255, got {background!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"limit must be a positive integer or None, got {limit!r}")


# ---------------------------------------------------------------- folders


def _load_folder(
    src: FolderSource, resolution: int, channels: int, background: tuple[int, int, int],
    cache_dir: str | os.PathLike | None, progress: bool,
) -> ImageDataset:
    """Digest every file, then read the cache or decode everything and write the cache."""
    if not src.items:
        raise nothing_usable(src.root, len(src.skipped), src.skipped)
    settings = {"resolution": resolution, "channels": channels, "background": list(background)}
    digests = [_item_digest(it.path) for it in src.items]
    key = cache.make_key(settings, [(it.rel, d) for it, d in zip(src.items, digests)])
    row_shape = (resolution, resolution, channels)
    entry = cache.load_entry(cache.cache_path(cache_dir, key), key, len(src.items), row_shape)
    if entry is None:
        entry, digests = _decode_items(src.items, resolution, channels, background, progress)
        # key from the digests of the bytes actually decoded, in case a file changed meanwhile
        key = cache.make_key(settings, [(it.rel, d) for it, d in zip(src.items, digests)])
        cache.save_entry(cache.cache_path(cache_dir, key), key, entry)
    else:
        log.info("dataset cache hit: %s", cache.cache_path(cache_dir, key))
    return _assemble_folder(src, entry, key, resolution, channels)


def _decode_items(
    items: list[FileItem], resolution: int, channels: int, background: tuple[int, int, int], progress: bool
) -> tuple[cache.CacheEntry, list[str]]:
    """Decode and resize every item (skipping bad ones) -> cache entry and content digests."""
    images = np.empty((len(items), resolution, resolution, channels), dtype=np.uint8)
    ok = np.zeros(len(items), dtype=bool)
    skipped: list[tuple[str, str]] = []
    digests: list[str] = []
    mode, count = ("L" if channels == 1 else "RGB"), 0
    bar = tqdm(items, desc="decoding images", unit="img", file=sys.stderr, disable=not progress, leave=False)
    for i, item in enumerate(bar):
        img, digest, reason = decode_file(item.path, mode=mode, background=background)
        digests.append(digest)
        if img is None:
            skipped.append((item.rel, reason))
            continue
        images[count] = resize_center_crop(img, resolution)
        ok[i], count = True, count + 1
    return cache.CacheEntry(images[:count].copy() if count < len(items) else images, ok, skipped), digests


def _assemble_folder(
    src: FolderSource, entry: cache.CacheEntry, key: str, resolution: int, channels: int
) -> ImageDataset:
    """Build the dataset from the listing and the decoded rows (raises if none are usable)."""
    by_rel = {it.rel: it.path for it in src.items}
    skipped = src.skipped + [SkippedFile(by_rel.get(rel, rel), reason) for rel, reason in entry.skipped]
    keep = [it for it, good in zip(src.items, entry.ok) if good]
    if not keep:
        raise nothing_usable(src.root, len(src.items) + len(src.skipped), skipped)
    captions = [it.caption or "" for it in keep] if src.has_captions else None
    labels = np.array([it.label for it in keep], dtype=np.int64) if src.kind == "classes" else None
    _warn_skipped(src.root, len(src.items) + len(src.skipped), skipped)
    if src.unlisted:
        shown = ", ".join(escape_path(p) for p in src.unlisted[:UNLISTED_SHOWN])
        more = f" and {len(src.unlisted) - UNLISTED_SHOWN} more" if len(src.unlisted) > UNLISTED_SHOWN else ""
        log.warning("%s: %s (%s%s)", escape_path(src.root), unlisted_summary(src.unlisted), shown, more)
    return ImageDataset(
        images=entry.images, captions=captions, labels=labels, class_names=src.class_names,
        paths=[it.path for it in keep], skipped=skipped,
        content_hash=_content_hash(key, captions, labels, src.class_names),
        resolution=resolution, channels=channels, source_kind=src.kind,
    )


# ---------------------------------------------------------------- arrays


def _load_arrays(
    src: ArraySource, resolution: int, channels: int | None, background: tuple[int, int, int],
    cache_dir: str | os.PathLike | None, progress: bool,
) -> ImageDataset:
    """IDX/npz rows -> resized uint8 rows (cached unless they already have the right shape)."""
    n = int(src.images.shape[0])
    if n == 0:
        raise DataError(f"no images in {escape_path(src.path)}")
    channels = channels or (1 if src.images.shape[3] == 1 else 3)
    settings = {"resolution": resolution, "channels": channels, "background": list(background), "rows": n}
    key = cache.make_key(settings, [(os.path.basename(src.path), src.digest)])
    if src.images.shape[1:] == (resolution, resolution, channels):
        images = src.images
    else:
        path = cache.cache_path(cache_dir, key)
        entry = cache.load_entry(path, key, n, (resolution, resolution, channels))
        if entry is None:
            rows = _fit_rows(src.images, resolution, channels, background, progress)
            entry = cache.CacheEntry(rows, np.ones(n, bool), [])
            cache.save_entry(path, key, entry)
        images = entry.images
    return ImageDataset(
        images=images, captions=src.captions, labels=src.labels, class_names=src.class_names,
        paths=[f"{src.path}#{i}" for i in range(n)], skipped=[],
        content_hash=_content_hash(key, src.captions, src.labels, src.class_names),
        resolution=resolution, channels=channels, source_kind=src.kind,
    )


def _fit_rows(
    images: np.ndarray, resolution: int, channels: int, background: tuple[int, int, int], progress: bool
) -> np.ndarray:
    """Apply the resize/crop policy to every array row -> uint8 [N, r, r, channels]."""
    out = np.empty((images.shape[0], resolution, resolution, channels), dtype=np.uint8)
    rows = tqdm(range(images.shape[0]), desc="resizing images", unit="img", file=sys.stderr,
                disable=not progress, leave=False)
    for i in rows:
        out[i] = fit_array(images[i], resolution, channels, background)
    return out


# ---------------------------------------------------------------- reporting


def _content_hash(key: str, captions: list[str] | None, labels: np.ndarray | None,
                  class_names: list[str] | None) -> str:
    """sha256 over the pixel cache key plus captions, labels and class names."""
    h = hashlib.sha256(key.encode())
    extra = {"captions": captions, "class_names": class_names}
    h.update(json.dumps(extra, ensure_ascii=True).encode())
    if labels is not None:
        h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def nothing_usable(root: str, total: int, skipped: list[SkippedFile]) -> DataError:
    """The DataError for a source with no usable image."""
    if total == 0:
        return DataError(f"no image files found in {escape_path(root)}")
    first = "; ".join(f"{escape_path(s.path)}: {s.reason}" for s in skipped[:5])
    return DataError(f"0 of {total} files decodable in {escape_path(root)}; first 5 errors: {first}")


def _warn_skipped(root: str, total: int, skipped: list[SkippedFile]) -> None:
    """One summary warning for skipped files (the full list is in ``.skipped`` / data check)."""
    if skipped:
        first = skipped[0]
        log.warning(
            "%d of %d files skipped in %s (first: %s: %s); `limner data check` lists them all",
            len(skipped), total, escape_path(root), escape_path(first.path), first.reason,
        )
