"""Array sources: Fashion-MNIST IDX files (``.gz`` or raw) and ``.npz`` archives.

IDX is the format of LeCun's MNIST page, reused by Fashion-MNIST (Xiao et al. 2017): a
big-endian header ``0x00 0x00 <dtype> <ndim>``, ``ndim`` uint32 dimensions, then the data. Only
unsigned-byte data (dtype 0x08) is accepted; images are idx3 (N, H, W), labels idx1 (N,). The
labels file is found beside the images by name (``images-idx3`` -> ``labels-idx1``) and
``classes.txt`` beside them names the classes. Reads are chunked and bounded by the header, so a
lying header cannot make limner allocate more than the file delivers.

``.npz`` files are read with ``allow_pickle=False``: ``images`` uint8 (N, H, W) or
(N, H, W, C) with C in {1, 3, 4}; optional ``labels`` (N,) integers, ``captions`` (N,) strings
and ``class_names`` strings. Object arrays (which need pickle) are refused.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np

from limner.data.cache import file_digest
from limner.data.display import escape_path
from limner.errors import DataError

IDX_IMAGES = re.compile(r"images[.-]idx3-ubyte(\.gz)?$")
_CHUNK = 1 << 24
_MAX_DIM = 1 << 16


@dataclass
class ArraySource:
    """Images that arrive as arrays (no per-file decode)."""

    path: str  # the images file
    kind: Literal["idx", "npz"]
    images: np.ndarray  # uint8 [N, H, W, C], C in {1, 3, 4}
    labels: np.ndarray | None  # int64 [N]
    captions: list[str] | None
    class_names: list[str] | None
    digest: str  # sha256 of the source files' bytes


def files_digest(*paths: str) -> str:
    """sha256 over the content digests of one or more files."""
    try:
        return hashlib.sha256("".join(file_digest(p) for p in paths).encode()).hexdigest()
    except OSError as e:
        raise DataError(f"cannot read {escape_path(str(e.filename or paths[0]))}: {e}") from None


def is_idx_images(path: str) -> bool:
    """Whether a file name looks like an IDX images file (``*-images-idx3-ubyte[.gz]``)."""
    return bool(IDX_IMAGES.search(os.path.basename(path)))


def labels_file_name(images_name: str) -> str:
    """The IDX labels file name that goes with an images file name."""
    def swap(match: re.Match) -> str:
        return match.group(0).replace("images", "labels").replace("idx3", "idx1")

    return IDX_IMAGES.sub(swap, images_name)


def find_idx_in_dir(root: str) -> str | None:
    """The IDX images file of a folder (the ``train`` split if there is one), or None."""
    try:
        names = sorted(n for n in os.listdir(root) if is_idx_images(n) and not n.startswith("."))
    except OSError:
        return None
    if not names:
        return None
    train = [n for n in names if n.startswith("train")]
    return os.path.join(root, (train or names)[0])


def _read_exact(f: BinaryIO, count: int) -> bytes:
    """Read ``count`` bytes in chunks (no up-front allocation of a header-declared size)."""
    parts, got = [], 0
    while got < count:
        chunk = f.read(min(_CHUNK, count - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_idx(path: str, *, ndim: int, limit: int | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions (first ``limit`` rows)."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    shown = escape_path(path)
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] != 0x08 or head[3] != ndim:
                raise DataError(f"{shown}: not an unsigned-byte IDX file with {ndim} dimensions")
            dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim).ljust(4 * ndim, b"\0"))
            if any(d == 0 or d > _MAX_DIM for d in dims[1:]):
                raise DataError(f"{shown}: implausible IDX dimensions {dims}")
            n = dims[0] if limit is None else min(dims[0], limit)
            per_row = int(np.prod(dims[1:], dtype=np.int64))
            data = _read_exact(f, n * per_row)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{shown}: cannot read IDX file ({e})") from None
    if len(data) != n * per_row:
        raise DataError(f"{shown}: truncated IDX file ({len(data)} of {n * per_row} data bytes)")
    return np.frombuffer(data, dtype=np.uint8).reshape(n, *dims[1:])


def _read_class_names(folder: str) -> list[str] | None:
    """Lines of ``classes.txt`` in ``folder`` (None if absent or unreadable)."""
    path = os.path.join(folder, "classes.txt")
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError):
        return None
    return names or None


def load_idx(path: str, *, limit: int | None = None) -> ArraySource:
    """Load an IDX images file, its labels file (by name) and ``classes.txt`` beside it."""
    images = read_idx(path, ndim=3, limit=limit)[:, :, :, None]
    folder, name = os.path.split(path)
    labels_path = os.path.join(folder, labels_file_name(name))
    labels, digest_paths = None, [path]
    if os.path.isfile(labels_path):
        labels = read_idx(labels_path, ndim=1, limit=limit).astype(np.int64)
        if labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{escape_path(labels_path)}: {labels.shape[0]} labels for {images.shape[0]} images"
            )
        digest_paths.append(labels_path)
    class_names = _read_class_names(folder) if labels is not None else None
    if class_names is not None:
        digest_paths.append(os.path.join(folder, "classes.txt"))
    return ArraySource(path, "idx", images, labels, None, class_names, files_digest(*digest_paths))


def _npz_images(z: np.lib.npyio.NpzFile, shown: str) -> np.ndarray:
    """The validated ``images`` array of an npz as uint8 [N, H, W, C]."""
    if "images" not in z.files:
        raise DataError(f"{shown}: no 'images' array (found: {', '.join(z.files) or 'none'})")
    images = z["images"]
    if images.dtype != np.uint8:
        raise DataError(f"{shown}: 'images' must be uint8, not {images.dtype}")
    if images.ndim == 3:
        images = images[:, :, :, None]
    if images.ndim != 4 or images.shape[3] not in (1, 3, 4) or 0 in images.shape[1:3]:
        raise DataError(
            f"{shown}: 'images' must be (N, H, W) or (N, H, W, C) with C in 1, 3, 4; got {images.shape}"
        )
    return images


def _npz_strings(z: np.lib.npyio.NpzFile, key: str, shown: str) -> list[str] | None:
    """An optional 1-D string array of an npz as a list of str."""
    if key not in z.files:
        return None
    arr = z[key]
    if arr.ndim != 1 or arr.dtype.kind not in "US":
        raise DataError(f"{shown}: '{key}' must be a 1-D string array, got {arr.dtype} {arr.shape}")
    if arr.dtype.kind == "S":
        return [s.decode("utf-8", "replace") for s in arr.tolist()]
    return [str(s) for s in arr.tolist()]


def load_npz(path: str, *, limit: int | None = None) -> ArraySource:
    """Load an ``.npz`` dataset (module rules); never unpickles."""
    shown = escape_path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            images = _npz_images(z, shown)
            labels = z["labels"] if "labels" in z.files else None
            captions = _npz_strings(z, "captions", shown)
            class_names = _npz_strings(z, "class_names", shown)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{shown}: cannot read npz ({e}); object arrays are refused (no pickle)") from None
    n = images.shape[0]
    if labels is not None and (labels.shape != (n,) or labels.dtype.kind not in "iu"):
        raise DataError(f"{shown}: 'labels' must be ({n},) integers, got {labels.dtype} {labels.shape}")
    if captions is not None and len(captions) != n:
        raise DataError(f"{shown}: {len(captions)} captions for {n} images")
    stop = n if limit is None else limit
    return ArraySource(
        path, "npz", images[:stop],
        None if labels is None else labels[:stop].astype(np.int64),
        None if captions is None else captions[:stop],
        class_names, files_digest(path),
    )
