"""The one image-decode function every path uses (training loader, ``limner data check``, studio).

``decode_image`` turns untrusted bytes into an 8-bit RGB or L ``PIL.Image`` or raises
``ImageDecodeError`` with a human reason; no other exception type escapes. The rules:

1. Format sniffed from content, never from the file name, against an allowlist
   (``Image.open(fp, formats=ALLOWED_FORMATS)``); EPS/PDF/TIFF/PSD/... are refused before any
   plugin touches them, so Ghostscript is never run (Pillow handbook, security notes).
2. Pillow's decompression-bomb limit stays on: ``DecompressionBombWarning`` is promoted to an
   error inside a local ``warnings.catch_warnings()`` (as Pillow's OSS-Fuzz harness does) and
   the header size is checked again explicitly. Global Pillow flags are never changed;
   ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False and the full decode (``load()``) catches
   truncation that ``open``/``verify`` would miss (stylegan2-pytorch#7).
3. Oversized PNG text/ICC chunks fail through Pillow's ``MAX_TEXT_CHUNK`` guard (CVE-2014-9601).
4. First frame only (GIF, APNG, MPO). EXIF orientation applied; invalid EXIF is logged and the
   image is kept unrotated (Pillow#4703).
5. Mode rules (applied before any resize):
   ``1`` -> L (0/255); ``P``/``L``/``RGB`` with tRNS and ``LA``/``PA``/``RGBA`` -> alpha
   composited on ``background``; ``CMYK`` (incl. Adobe-inverted and YCCK JPEG, which libjpeg
   turns into CMYK) -> RGB with Pillow's multiplicative formula (embedded ICC profiles are not
   applied); ``I;16*``/``I``/``F`` -> 8 bit over the full 0..65535 range (scaled, not clipped:
   Pillow#2574); anything else Pillow can convert -> RGB.

Warnings Pillow raises while decoding (corrupt EXIF, odd chunks) are logged with the file name
instead of escaping, so a caller running with ``-W error`` still gets either an image or
``ImageDecodeError``. ``warnings.catch_warnings`` is process-global before Python 3.14: decode in
processes (DataLoader workers), not threads, if warnings matter to you.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from typing import BinaryIO, Literal

import numpy as np
from PIL import Image, ImageOps

from limner.errors import ImageDecodeError

log = logging.getLogger(__name__)

ALLOWED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default, used only if someone set the global to None
MAX_FILE_BYTES = 512 * 1024 * 1024
BYTES_NAME = "<bytes>"

_ORIENTATION_TAG = 0x0112
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "La", "RGBa"})
_WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

# Magic numbers of formats limner refuses, so the reason names what the file really is.
_REFUSED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"),
    (b"%PDF", "PDF"), (b"%!PS", "EPS/PostScript"), (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD"), (b"SIMPLE ", "FITS"), (b"\x00\x00\x01\x00", "ICO"), (b"icns", "ICNS"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"), (b"qoif", "QOI"),
    (b"DDS ", "DDS"), (b"v/1\x01", "OpenEXR"), (b"#?RADIANCE", "HDR"), (b"<?xml", "XML/SVG"),
    (b"<svg", "SVG"), (b"PK\x03\x04", "ZIP archive"), (b"\x1f\x8b", "gzip archive"),
)
_ALLOWED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
)


def sniff_format(data: bytes) -> str | None:
    """Name of the image format ``data`` starts with (allowed or not), or None if unknown."""
    for magic, name in _ALLOWED_MAGIC + _REFUSED_MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        return "AVIF" if brand.startswith(b"avi") else "HEIF/ISO media"
    if len(data) >= 3 and data[:1] == b"P" and data[1:2] in b"1234567" and data[2:3].isspace():
        return "PPM/PGM (netpbm)"
    return None


class NotRegularFileError(OSError):
    """The path is a FIFO, device, socket or directory, which limner never reads."""


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a regular file for binary reading; NotRegularFileError for anything else.

    ``O_NONBLOCK`` keeps a FIFO planted in a dataset from hanging the scan at ``open()``.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(f"not a regular file: {os.fsdecode(path)}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_image_file(path: str | os.PathLike) -> bytes:
    """Read a regular file's bytes for decoding; special, empty and huge files are refused."""
    name = os.fsdecode(path)
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise ImageDecodeError(name, f"file too large ({size} bytes > {MAX_FILE_BYTES})")
            data = f.read(MAX_FILE_BYTES + 1)
    except NotRegularFileError:
        raise ImageDecodeError(name, "not a regular file") from None
    except OSError as e:
        raise ImageDecodeError(name, f"cannot read ({e.strerror or e})") from None
    if not data:
        raise ImageDecodeError(name, "empty file")
    return data


def decode_image(
    source: str | os.PathLike | bytes,
    *,
    mode: Literal["RGB", "L"] = "RGB",
    background: tuple[int, int, int] = (255, 255, 255),
    name: str | None = None,
) -> Image.Image:
    """Decode one untrusted image to 8-bit ``mode`` under limner's rules (see module docstring).

    Args:
        source: a file path, or the file's bytes.
        mode: "RGB" or "L" (ITU-R 601 luma of the composited RGB image).
        background: RGB colour that transparent pixels are composited on.
        name: label used in error messages when ``source`` is bytes (default "<bytes>").
    Raises:
        ImageDecodeError: for every file that cannot be decoded safely, with a human reason.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), name or BYTES_NAME
        if not data:
            raise ImageDecodeError(label, "empty file")
    else:
        data, label = read_image_file(source), name or os.fsdecode(source)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = _decode_frame(data, label)
            img = _apply_exif_orientation(img, label)
            img = _to_mode(img, mode, background)
        except ImageDecodeError:
            raise
        except Exception as e:  # every decoder failure becomes one typed error
            raise ImageDecodeError(label, _reason(e, data)) from e
    for w in caught:
        log.warning("%s: %s", label, w.message)
    return img


def _decode_frame(data: bytes, label: str) -> Image.Image:
    """Open with the allowlist, check the header size, fully decode the first frame."""
    try:
        img = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
    except Image.UnidentifiedImageError:
        fmt = sniff_format(data)
        if fmt is None:
            reason = "not a recognised image (allowed: PNG, JPEG, WebP, BMP, GIF)"
        elif fmt in ALLOWED_FORMATS:
            reason = f"corrupt {fmt} header"
        else:
            reason = f"unsupported format {fmt}"
        raise ImageDecodeError(label, reason) from None
    width, height = img.size
    limit = Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS
    if width * height > limit:  # explicit, in case warning filters are changed under us
        raise ImageDecodeError(
            label, f"decompression bomb: {width}x{height} = {width * height} pixels > {limit}"
        )
    if width == 0 or height == 0:
        raise ImageDecodeError(label, f"empty image ({width}x{height})")
    img.load()  # full decode: truncated data fails here, not later in a training step
    return img


def _apply_exif_orientation(img: Image.Image, label: str) -> Image.Image:
    """Apply the EXIF orientation tag (values 2..8); invalid EXIF keeps the image unrotated."""
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG)
    except Exception as e:
        log.warning("%s: invalid EXIF ignored, image not rotated (%s)", label, e)
        return img
    if orientation is None or orientation == 1:
        return img
    if not isinstance(orientation, int) or not 2 <= orientation <= 8:
        log.warning("%s: invalid EXIF orientation %r ignored, image not rotated", label, orientation)
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception as e:
        log.warning("%s: EXIF orientation could not be applied (%s)", label, e)
        return img


def _to_mode(img: Image.Image, mode: str, background: tuple[int, int, int]) -> Image.Image:
    """Apply the module's mode rules: result is 8-bit ``mode`` with alpha composited."""
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode in _WIDE_MODES:
        img = _to_8bit(img)
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        img = composite_alpha(img, background)
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")  # CMYK, YCbCr, RGBX, ...; Pillow raises for the unconvertible
    return img if img.mode == mode else img.convert(mode)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> L, mapping 0..65535 linearly onto 0..255."""
    a = np.asarray(img)
    if img.mode == "F":
        out = np.rint(np.clip(a, 0.0, 65535.0) * np.float32(255.0 / 65535.0))
    else:
        out = (np.clip(a, 0, 65535).astype(np.uint32) * 255 + 32767) // 65535
    return Image.fromarray(out.astype(np.uint8), mode="L")


def composite_alpha(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Alpha-composite onto an opaque ``background`` colour (un-premultiplies La/RGBa first)."""
    rgba = img.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*(int(c) for c in background), 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _reason(exc: BaseException, data: bytes) -> str:
    """A short human reason for a decoder exception."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"decompression bomb: {msg}"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    if isinstance(exc, EOFError) or "truncated" in msg.lower():
        return f"truncated ({msg})"
    if "too large" in msg.lower() and "TEXT" in msg:
        return "metadata too large (PNG text/ICC chunk over Pillow's MAX_TEXT_CHUNK)"
    fmt = sniff_format(data) or "image"
    return f"corrupt {fmt} ({type(exc).__name__}: {msg})"
