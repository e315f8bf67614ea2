"""Fixtures for the data-layer tests: image bytes made with Pillow (nothing downloaded), hand-built
PNG chunks for bombs and metadata floods, IDX/npz writers, and a per-test dataset cache folder.

Helpers are plain functions exposed through the session fixture ``fx`` so that hypothesis tests
can use them without function-scoped fixtures.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import struct
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own dataset cache folder (never ~/.cache)."""
    monkeypatch.setenv("LIMNER_CACHE_DIR", str(tmp_path_factory.mktemp("limner-cache")))


# ---------------------------------------------------------------- images


def gradient(w: int = 24, h: int = 16) -> Image.Image:
    """A deterministic RGB image with distinct values everywhere."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 7 % 256], -1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    """Image -> file bytes in ``fmt``."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png(w: int = 24, h: int = 16) -> bytes:
    return encode(gradient(w, h), "PNG")


def jpeg(w: int = 24, h: int = 16) -> bytes:
    return encode(gradient(w, h), "JPEG", quality=95)


def write(path: Path | str | bytes, data: bytes) -> None:
    """Write bytes to a path (bytes paths allowed, for non-UTF-8 names)."""
    with open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- hand-built PNGs


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR declares w x h (1-bit grey) followed by a token IDAT."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@functools.lru_cache(maxsize=None)
def png_single_colour(w: int, h: int) -> bytes:
    """A real, complete 1-bit PNG of w x h zeros (compressed row by row, never held whole)."""
    row = b"\0" * (1 + (w + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(h)] + [comp.flush()]
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def png_with_chunk_before_idat(extra: bytes) -> bytes:
    """A small valid PNG with an extra chunk inserted right after IHDR."""
    data = png(8, 8)
    cut = 8 + 25  # signature + IHDR chunk
    return data[:cut] + extra + data[cut:]


@functools.lru_cache(maxsize=None)
def ztxt_flood(mb: int = 10) -> bytes:
    """PNG whose zTXt chunk decompresses to ``mb`` MB (Pillow's MAX_TEXT_CHUNK is 1 MB)."""
    payload = b"comment\0\0" + zlib.compress(b"A" * (mb << 20), 9)
    return png_with_chunk_before_idat(chunk(b"zTXt", payload))


@functools.lru_cache(maxsize=None)
def iccp_flood(mb: int = 10) -> bytes:
    """PNG whose iCCP profile decompresses to ``mb`` MB."""
    payload = b"icc\0\0" + zlib.compress(b"\0" * (mb << 20), 9)
    return png_with_chunk_before_idat(chunk(b"iCCP", payload))


# ---------------------------------------------------------------- arrays


def idx_bytes(arr: np.ndarray) -> bytes:
    """uint8 array -> IDX bytes."""
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def write_idx_pair(folder: Path, n: int = 12, gz: bool = True, classes: bool = True, prefix: str = "train") -> Path:
    """Fashion-MNIST style images/labels IDX files (+ classes.txt); returns the images path."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 3).astype(np.uint8)
    suffix = ".gz" if gz else ""
    opener = gzip.open if gz else open
    img_path = folder / f"{prefix}-images-idx3-ubyte{suffix}"
    with opener(img_path, "wb") as f:
        f.write(idx_bytes(images))
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(idx_bytes(labels))
    if classes:
        (folder / "classes.txt").write_text("zero\none\ntwo\n")
    return img_path


def write_imagefolder(folder: Path, rows: list[tuple[str, bytes, str | None]]) -> None:
    """Write images and a metadata.jsonl (text omitted when None)."""
    import json

    lines = []
    for name, data, text in rows:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write(folder / name, data)
        lines.append(json.dumps({"file_name": name} | ({} if text is None else {"text": text})))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- a corpus of good and bad files


@functools.lru_cache(maxsize=1)
def corpus() -> dict[str, bytes]:
    """Named good and bad image files (bad ones say why in their name)."""
    png_data, jpeg_data = png(20, 12), jpeg(20, 12)
    return {
        "good.png": png_data,
        "good.jpg": jpeg_data,
        "good.webp": encode(gradient(10, 14), "WEBP", lossless=True),
        "good.bmp": encode(gradient(9, 9), "BMP"),
        "good.gif": encode(gradient(12, 12).convert("P"), "GIF"),
        "rgba.png": encode(gradient(8, 8).convert("RGBA"), "PNG"),
        "la.png": encode(gradient(8, 8).convert("LA"), "PNG"),
        "onebit.png": encode(gradient(8, 8).convert("1"), "PNG"),
        "cmyk.jpg": encode(gradient(8, 8).convert("CMYK"), "JPEG"),
        "bad-empty.png": b"",
        "bad-truncated.png": png_data[: len(png_data) // 2],
        "bad-truncated.jpg": jpeg_data[: len(jpeg_data) // 2],
        "bad-tiff.png": encode(gradient(8, 8), "TIFF"),
        "bad-pdf.png": encode(gradient(8, 8), "PDF"),
        "bad-text.png": b"hello, not an image\n",
        "bad-bomb.png": png_header_only(100_000, 100_000),
        "bad-garbage.jpg": b"\xff\xd8\xff" + bytes(range(256)) * 4,
    }


@pytest.fixture(scope="session")
def fx():
    """The helper functions of this module, for tests (including hypothesis tests)."""
    names = [
        "gradient", "encode", "png", "jpeg", "write", "chunk", "png_header_only", "png_single_colour",
        "png_with_chunk_before_idat", "ztxt_flood", "iccp_flood", "idx_bytes", "write_idx_pair",
        "write_imagefolder", "corpus",
    ]
    return types.SimpleNamespace(**{n: globals()[n] for n in names})


@pytest.fixture
def bytes_tmp(tmp_path) -> bytes:
    """tmp_path as bytes, for creating files with non-UTF-8 names."""
    return os.fsencode(tmp_path)
