"""Image files under the studio home: pixel hashes, thumbnails, embedded records, containment.

Every decode goes through ``limner.data.decode.decode_image`` (the one decode function). The
record is read from the PNG's ``limner`` text chunk, the chunk ``limner.generation.pngmeta``
writes; only the JSON is parsed here (the store sits below ``generation`` and takes the record
as a plain dict).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image

from limner.data.decode import decode_image
from limner.errors import ImageDecodeError, LimnerError
from limner.fsutil import atomic_write

RECORD_CHUNK = "limner"  # the key limner.generation.pngmeta writes the record under
THUMB_SIZE = 256


def pixel_hash(img: Image.Image) -> str:
    """sha256 over mode, size and pixels: identical pixels give one hash whatever the metadata."""
    h = hashlib.sha256(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def png_record(path: Path) -> dict[str, Any]:
    """The generation record embedded in a PNG limner wrote, as a dict (clear error otherwise)."""
    try:
        with Image.open(path, formats=["PNG"]) as im:
            raw = dict(im.text).get(RECORD_CHUNK)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise LimnerError(f"{path}: not a readable PNG ({e})") from None
    if raw is None:
        raise LimnerError(f"{path}: no limner generation record in this PNG")
    try:
        record = json.loads(raw)
    except ValueError as e:
        raise LimnerError(f"{path}: malformed limner record ({e})") from None
    if not isinstance(record, dict):
        raise LimnerError(f"{path}: malformed limner record (not a JSON object)")
    return record


def write_thumbnail(img: Image.Image, dest: Path) -> Path:
    """A PNG at most THUMB_SIZE on its long side, written atomically to ``dest``."""
    thumb = img.copy()
    thumb.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="PNG", optimize=True)
    return atomic_write(dest, lambda f: f.write(buf.getvalue()), fsync=False)


def decode_for_store(path: Path) -> Image.Image:
    """Decode ``path`` with the one decode function (RGB)."""
    return decode_image(path, mode="RGB")


def relative_to_home(home: Path, path: Path) -> str:
    """``path`` relative to ``home`` with "/" separators; refuses anything outside home
    (symlinks resolved first, so a link pointing out of the home is refused too)."""
    real_home = home.resolve()
    real = Path(os.path.realpath(path))
    try:
        rel = real.relative_to(real_home)
    except ValueError:
        raise LimnerError(f"{path}: not inside the studio home {home}") from None
    return rel.as_posix()


def resolve_in_home(home: Path, rel: str) -> Path:
    """The absolute path of a stored relative path, checked to stay inside ``home``."""
    real_home = home.resolve()
    real = Path(os.path.realpath(real_home / rel))
    if real != real_home and real_home not in real.parents:
        raise LimnerError(f"{rel}: resolves outside the studio home {home}")
    return real


__all__ = ["pixel_hash", "png_record", "write_thumbnail", "decode_for_store", "relative_to_home",
           "resolve_in_home", "ImageDecodeError"]
