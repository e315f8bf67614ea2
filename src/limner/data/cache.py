"""On-disk cache of decoded, resized datasets, so a second run starts in seconds.

One file per key, ``<cache dir>/<key>.npz`` (uncompressed, read with ``allow_pickle=False``),
holding ``images`` (uint8 [M, H, W, C], the usable rows), ``ok`` (bool [N], which of the N
listed items decoded) and ``meta`` (JSON bytes: version, key, skipped items with reasons).

The key is a sha256 over ``DATA_FORMAT_VERSION``, the decode settings (resolution, channels,
background, limit) and the ordered list of (item name, sha256 of the item's bytes), so any
change to a file's content, to the file set or to the settings is a different key; captions and
labels are not part of it (they are re-read on every load, which is cheap). Bump
``DATA_FORMAT_VERSION`` whenever decode or resize rules change what pixels come out.

Writes go to a temporary file in the same folder, then ``os.replace`` (atomic on POSIX and
Windows), so a crash never leaves a half-written cache under the final name. A cache file that
fails to load or to validate is logged, ignored and rebuilt. The default folder is
``$LIMNER_CACHE_DIR``, else ``$XDG_CACHE_HOME/limner/datasets``, else
``~/.cache/limner/datasets``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from limner.data.decode import open_regular
from limner.fsutil import atomic_write

log = logging.getLogger(__name__)

DATA_FORMAT_VERSION = 1


@dataclass
class CacheEntry:
    """Decoded pixels of one dataset listing."""

    images: np.ndarray  # uint8 [M, H, W, C], M = ok.sum()
    ok: np.ndarray  # bool [N]
    skipped: list[tuple[str, str]]  # (item name, reason) for items that did not decode


def file_digest(path: str) -> str:
    """sha256 of a regular file's bytes, streamed; OSError for anything else (FIFO, device)."""
    with open_regular(path) as f:
        h = hashlib.sha256()
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """$LIMNER_CACHE_DIR, else $XDG_CACHE_HOME/limner/datasets, else ~/.cache/limner/datasets."""
    if os.environ.get("LIMNER_CACHE_DIR"):
        return Path(os.environ["LIMNER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "limner" / "datasets"


def make_key(settings: dict, rows: list[tuple[str, str]]) -> str:
    """sha256 hex key over the format version, settings and (name, content digest) rows."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": DATA_FORMAT_VERSION, **settings}, sort_keys=True).encode())
    for name, digest in rows:
        # surrogateescape keeps non-UTF-8 file names distinct; NUL separators keep rows apart
        h.update(name.encode("utf-8", "surrogateescape") + b"\x00" + digest.encode() + b"\x00")
    return h.hexdigest()


def cache_path(cache_dir: str | os.PathLike | None, key: str) -> Path:
    """Where the entry for ``key`` lives."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{key}.npz"


def load_entry(path: Path, key: str, n_items: int, row_shape: tuple[int, int, int]) -> CacheEntry | None:
    """Read and validate a cache file; None (with a log line) if absent, corrupt or stale."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode("utf-8"))
            ok, images = z["ok"], z["images"]
        if meta.get("version") != DATA_FORMAT_VERSION or meta.get("key") != key:
            raise ValueError("key or version mismatch")
        if ok.dtype != np.bool_ or ok.shape != (n_items,):
            raise ValueError(f"ok mask {ok.dtype} {ok.shape}, expected ({n_items},)")
        if images.dtype != np.uint8 or images.shape != (int(ok.sum()), *row_shape):
            raise ValueError(f"images {images.dtype} {images.shape} do not match the mask")
        skipped = [(str(name), str(reason)) for name, reason in meta["skipped"]]
    except Exception as e:  # any damage means "rebuild", never "crash"
        log.warning("ignoring unusable dataset cache %s (%s); rebuilding", path, e)
        return None
    return CacheEntry(images, ok, skipped)


def save_entry(path: Path, key: str, entry: CacheEntry) -> None:
    """Write an entry atomically (temp file + os.replace); failures are logged, not raised."""
    meta = json.dumps({"version": DATA_FORMAT_VERSION, "key": key, "skipped": entry.skipped})

    def write(f) -> None:
        np.savez(f, images=entry.images, ok=entry.ok, meta=np.frombuffer(meta.encode(), np.uint8))

    try:
        atomic_write(path, write, fsync=False)
    except OSError as e:
        log.warning("could not write dataset cache %s (%s); continuing without it", path, e)
