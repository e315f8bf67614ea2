"""Geometry policy: every training image becomes a ``size x size`` uint8 array the same way.

Resize / centre-crop policy (one rule for every source kind and every aspect ratio):

1. Take the largest centred square of the decoded image (side = the shorter side; integer
   offsets, so an image that is already ``size`` on its shorter side is cropped, not resampled).
   This is the same picture as "shorter side to ``size``, then centre crop" (torchvision's
   ``Resize`` + ``CenterCrop``), computed on the source pixels so a 1x20000 strip never
   allocates a 32x640000 intermediate.
2. Resample that square to ``size x size``: Lanczos when shrinking (antialiased; when the ratio
   is over 3x, a box filter first brings it to ``3 * size``, which keeps big photos fast, the
   same idea as Pillow's ``reducing_gap``), bicubic when enlarging.
3. Small images are upscaled, never skipped, so a folder of tiny icons still trains;
   ``limner data check --resolution`` reports how many images are smaller than the resolution.

Alpha must already be composited (``decode_image`` does it) so that resampling never blends
colours from fully transparent pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from limner.data.decode import composite_alpha

_REDUCING_GAP = 3.0


def center_square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square (left, top, right, bottom) inside a width x height image."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square and resample to ``size`` (module policy) -> uint8 [size, size, C].

    Args:
        img: an "RGB" or "L" image, as ``decode_image`` returns.
        size: output side in pixels (>= 1).
    Returns:
        uint8 array [size, size, 3] for RGB, [size, size, 1] for L.
    """
    if img.mode not in ("RGB", "L"):
        raise ValueError(f"resize_center_crop expects an RGB or L image, got mode {img.mode!r}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    box = center_square_box(*img.size)
    side = box[2] - box[0]
    if side == size:
        out = img.crop(box) if img.size != (size, size) else img
    elif side > size * _REDUCING_GAP:
        # Box-filter to 3x first (cost linear in pixels), then Lanczos. Not Pillow's own
        # ``reducing_gap``: Image.reduce loses precision at large factors (a flat 10000 px
        # square reduced to 1 px came out 190 instead of 255 in Pillow 13).
        mid = round(size * _REDUCING_GAP)
        out = img.resize((mid, mid), Image.Resampling.BOX, box=box)
        out = out.resize((size, size), Image.Resampling.LANCZOS)
    elif side > size:
        out = img.resize((size, size), Image.Resampling.LANCZOS, box=box)
    else:
        out = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    arr = np.asarray(out, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def fit_array(
    image: np.ndarray, size: int, channels: int, background: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """Apply the same mode rules and policy to one uint8 [H, W, C] array (C = 1, 3 or 4).

    Returns uint8 [size, size, channels]; RGBA is composited on ``background`` first.
    """
    if image.shape[0] == size and image.shape[1] == size and image.shape[2] == channels:
        return image
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    if pil.mode == "RGBA":
        pil = composite_alpha(pil, background)
    want = "L" if channels == 1 else "RGB"
    if pil.mode != want:
        pil = pil.convert(want)
    return resize_center_crop(pil, size)
