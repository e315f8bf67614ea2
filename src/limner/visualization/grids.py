"""Image grids with optional captions under each cell, for sample previews and galleries.

Small images are upscaled by an integer factor with nearest-neighbour sampling, so 32 px samples
show their real pixels at a visible size. Layout follows torchvision's ``make_grid`` (``nrow``
images per row, ``padding`` pixels around every cell); labels use Pillow's bundled font.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from limner.fsutil import atomic_write

MIN_CELL = 96  # auto scale: smallest integer factor giving cells at least this many pixels
MAX_LABEL_LINES = 3
ELLIPSIS = "…"

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# ----------------------------------------------------------------------------
# Public API


def make_grid(
    images: Tensor | np.ndarray,
    *,
    nrow: int | None = None,
    labels: Sequence[str] | None = None,
    scale: int | None = None,
    padding: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tile images into one RGB image, with each label wrapped (<= 3 lines) under its image.

    Args:
        images: [N, C, H, W] uint8, C = 1 (grey) or 3 (RGB); torch or numpy.
        nrow: images per row (default: ceil(sqrt(N))).
        labels: N strings written under the images, or None.
        scale: integer nearest-neighbour upscale (default: smallest making cells >= 96 px).
        padding: pixels of background around every cell.
        background: RGB fill of the padding and label areas.
    """
    array = _as_uint8_nchw(images)
    N, _, H, W = array.shape
    if labels is not None and len(labels) != N:
        raise ValueError(f"got {len(labels)} labels for {N} images")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    scale = scale if scale is not None else max(1, math.ceil(MIN_CELL / max(H, W)))
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    cells = _upscale(array, scale)  # [N, H*s, W*s, 3]
    ncol = min(N, nrow if nrow is not None else math.ceil(math.sqrt(N)))
    if ncol < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    text = _LabelLayout(labels, W * scale) if labels is not None else None
    return _compose(cells, ncol, padding, background, text)


def save_grid(path: str | os.PathLike[str], images: Tensor | np.ndarray, **kwargs: Any) -> Path:
    """Write ``make_grid(images, **kwargs)`` as a PNG atomically (temp file, then rename)."""
    return save_png_atomic(make_grid(images, **kwargs), path)


def save_png_atomic(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` as a PNG via a temp file in the same folder, fsync, then rename."""
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


# ----------------------------------------------------------------------------
# Pixels


def _as_uint8_nchw(images: Tensor | np.ndarray) -> np.ndarray:
    """Validate and convert to a numpy uint8 array [N, C, H, W] with C in (1, 3)."""
    if isinstance(images, Tensor):
        images = images.detach().cpu().numpy()
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {array.dtype}")
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] with C = 1 or 3, got {list(array.shape)}")
    if 0 in array.shape:
        raise ValueError(f"images must be non-empty, got shape {list(array.shape)}")
    return array


def _upscale(array: np.ndarray, scale: int) -> np.ndarray:
    """[N, C, H, W] → [N, H*scale, W*scale, 3] by pixel repetition (nearest neighbour)."""
    nhwc = np.ascontiguousarray(array.transpose(0, 2, 3, 1))
    if nhwc.shape[-1] == 1:
        nhwc = np.repeat(nhwc, 3, axis=-1)
    return nhwc.repeat(scale, axis=1).repeat(scale, axis=2)


def _compose(
    cells: np.ndarray,
    ncol: int,
    padding: int,
    background: tuple[int, int, int],
    text: "_LabelLayout | None",
) -> Image.Image:
    """Paste cells row-major onto a padded canvas, then draw the labels."""
    N, h, w, _ = cells.shape
    label_h = text.height if text is not None else 0
    nrows = math.ceil(N / ncol)
    width = ncol * w + (ncol + 1) * padding
    height = nrows * (h + label_h) + (nrows + 1) * padding
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = np.asarray(background, dtype=np.uint8)
    origins = [_cell_origin(i, ncol, w, h + label_h, padding) for i in range(N)]
    for (x, y), cell in zip(origins, cells):
        canvas[y : y + h, x : x + w] = cell
    grid = Image.fromarray(canvas)
    if text is not None:
        text.draw(grid, [(x, y + h) for x, y in origins], background)
    return grid


def _cell_origin(i: int, ncol: int, w: int, h: int, padding: int) -> tuple[int, int]:
    """Top-left pixel of cell ``i`` (row-major)."""
    row, col = divmod(i, ncol)
    return padding + col * (w + padding), padding + row * (h + padding)


# ----------------------------------------------------------------------------
# Labels


class _LabelLayout:
    """Labels wrapped to the cell width, with the font and the label band height they need."""

    def __init__(self, labels: Sequence[str], width: int):
        self.font = ImageFont.load_default(size=max(10, min(16, width // 8)))
        self.width = width
        self.lines = [_wrap(str(label), self.font, width) for label in labels]
        self.line_height = int(self.font.getbbox("Ágjy")[3]) + 2  # tallest ascent + descent
        self.height = max(len(lines) for lines in self.lines) * self.line_height + 2

    def draw(self, grid: Image.Image, origins: list[tuple[int, int]], background: tuple[int, int, int]) -> None:
        """Write each label's lines, centred, into the band starting at its origin."""
        draw = ImageDraw.Draw(grid)
        fill = (0, 0, 0) if sum(background) > 3 * 127 else (255, 255, 255)
        for (x, y), lines in zip(origins, self.lines):
            for k, line in enumerate(lines):
                dx = max(0, (self.width - int(self.font.getlength(line))) // 2)
                draw.text((x + dx, y + 1 + k * self.line_height), line, fill=fill, font=self.font)


def _wrap(text: str, font: Font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels, at most 3 lines, the last ending in "…" if cut."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        lines.extend(_wrap_paragraph(paragraph, font, width))
    if len(lines) <= MAX_LABEL_LINES:
        return lines
    kept = lines[:MAX_LABEL_LINES]
    kept[-1] = _fit(kept[-1] + ELLIPSIS, font, width, suffix=ELLIPSIS)
    return kept


def _wrap_paragraph(paragraph: str, font: Font, width: int) -> list[str]:
    """Greedy wrap of one paragraph; words wider than a line are split by characters."""
    lines: list[str] = []
    line = ""
    for word in paragraph.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = word
        while font.getlength(line) > width and len(line) > 1:
            cut = _longest_prefix(line, font, width)
            lines.append(line[:cut])
            line = line[cut:]
    return lines + [line] if line or not lines else lines


def _longest_prefix(text: str, font: Font, width: int) -> int:
    """Length of the longest prefix of ``text`` (at least 1 char) that fits in ``width``."""
    n = 1
    while n < len(text) and font.getlength(text[: n + 1]) <= width:
        n += 1
    return n


def _fit(line: str, font: Font, width: int, suffix: str) -> str:
    """``line`` (ending in ``suffix``) shortened from before the suffix until it fits."""
    body = line[: -len(suffix)].rstrip()
    while body and font.getlength(body + suffix) > width:
        body = body[:-1].rstrip()
    return body + suffix
