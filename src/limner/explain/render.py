"""Drawing helpers shared by the views: tensors to pictures, heat maps, labelled rows, bar
charts. Pillow only; nothing here computes anything about a model.

The heat-map colours interpolate the anchor colours of matplotlib's "magma" (van der Walt &
Smith's perceptually uniform colour maps, 2015), so brighter always means larger.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
MUTED = (110, 110, 110)
# (position, RGB) anchors of a magma-like map: black -> purple -> orange -> pale yellow.
_MAGMA = [(0.0, (0, 0, 4)), (0.25, (80, 18, 123)), (0.5, (183, 55, 121)),
          (0.75, (252, 137, 97)), (1.0, (252, 253, 191))]
# blue -> white -> red, for signed values.
_DIVERGING = [(0.0, (33, 102, 172)), (0.5, (247, 247, 247)), (1.0, (178, 24, 43))]


def font(size: int = 13) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _ramp(values: np.ndarray, anchors: list[tuple[float, tuple[int, int, int]]]) -> np.ndarray:
    """values in [0, 1] -> uint8 RGB by piecewise-linear interpolation of ``anchors``."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    xs = [a for a, _ in anchors]
    out = np.empty(v.shape + (3,), dtype=np.uint8)
    for c in range(3):
        out[..., c] = np.interp(v, xs, [rgb[c] for _, rgb in anchors]).round().astype(np.uint8)
    return out


def heat(values: Tensor | np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Non-negative map [H, W] -> RGB uint8 [H, W, 3] (0 black, ``vmax`` pale yellow)."""
    v = _numpy(values).astype(np.float64)
    top = float(vmax) if vmax is not None else float(np.nanmax(v)) if v.size else 1.0
    return _ramp(v / (top if top > 0 else 1.0), _MAGMA)


def diverging(values: Tensor | np.ndarray, limit: float | None = None) -> np.ndarray:
    """Signed map [H, W] -> RGB uint8 (negative blue, 0 white, positive red)."""
    v = _numpy(values).astype(np.float64)
    lim = float(limit) if limit is not None else float(np.nanmax(np.abs(v))) if v.size else 1.0
    return _ramp(0.5 + 0.5 * v / (lim if lim > 0 else 1.0), _DIVERGING)


def image_rgb(x: Tensor, *, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """One image [C, H, W] (C = 1 or 3, values in [low, high]) -> RGB uint8 [H, W, 3]."""
    x = x.detach().float().cpu()
    if x.dtype == torch.uint8:
        arr = x.numpy()
    else:
        arr = ((x.clamp(low, high) - low) / (high - low) * 255).round().to(torch.uint8).numpy()
    arr = np.transpose(arr, (1, 2, 0))
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]


def uint8_rgb(x: Tensor | np.ndarray) -> np.ndarray:
    """uint8 [C, H, W] -> RGB uint8 [H, W, 3]."""
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    arr = np.transpose(arr.astype(np.uint8), (1, 2, 0))
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]


def normalised_rgb(x: Tensor) -> np.ndarray:
    """An image-like tensor [C, H, W] of any range, stretched per tensor to the full range
    (for noise, latents and residuals whose values are not pixels)."""
    x = x.detach().float().cpu()
    if x.shape[0] not in (1, 3):
        x = x[:3] if x.shape[0] > 3 else x[:1]
    lo, hi = float(x.min()), float(x.max())
    return image_rgb(x, low=lo, high=hi if hi > lo else lo + 1.0)


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def cell(arr: np.ndarray, size: int) -> Image.Image:
    """RGB array -> a square-ish PIL image ``size`` pixels high (nearest-neighbour upscaling
    for small maps, so pixels stay pixels)."""
    image = Image.fromarray(arr)
    h, w = arr.shape[:2]
    scale = size / h
    resample = Image.NEAREST if scale >= 1 else Image.BILINEAR
    return image.resize((max(1, round(w * scale)), size), resample)


def text_width(text: str, f) -> int:
    return int(math.ceil(f.getlength(text)))


def grid(rows: Sequence[Sequence[Image.Image | None]], *, row_labels: Sequence[str] | None = None,
         col_labels: Sequence[str] | None = None, title: str = "", pad: int = 4,
         label_width: int | None = None) -> Image.Image:
    """Cells in rows (None = empty), with optional labels left of rows and above columns."""
    f, ft = font(12), font(14)
    ncol = max(len(r) for r in rows)
    widths = [max((r[c].width for r in rows if c < len(r) and r[c] is not None), default=0)
              for c in range(ncol)]
    heights = [max((c.height for c in r if c is not None), default=0) for r in rows]
    lw = 0
    if row_labels:
        lw = label_width or (max(text_width(s, f) for s in row_labels) + 10)
    top = (22 if title else 0) + (18 if col_labels else 0)
    W = lw + sum(widths) + pad * (ncol + 1)
    H = top + sum(heights) + pad * (len(rows) + 1)
    canvas = Image.new("RGB", (max(W, text_width(title, ft) + 2 * pad), H), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 4), title, fill=INK, font=ft)
    y = top + pad
    for r, row in enumerate(rows):
        x = lw + pad
        if row_labels:
            draw.text((lw - 6, y + heights[r] // 2), row_labels[r], fill=INK, font=f, anchor="rm")
        for c, im in enumerate(row):
            if im is not None:
                canvas.paste(im, (x, y))
            if r == 0 and col_labels and c < len(col_labels):
                draw.text((x + widths[c] // 2, top - 3), col_labels[c], fill=MUTED, font=f,
                          anchor="mb")
            x += widths[c] + pad
        y += heights[r] + pad
    return canvas


def hstack(images: Sequence[Image.Image], pad: int = 8, align: str = "top") -> Image.Image:
    """Images side by side on a white background."""
    W = sum(i.width for i in images) + pad * (len(images) + 1)
    H = max(i.height for i in images) + 2 * pad
    canvas = Image.new("RGB", (W, H), BACKGROUND)
    x = pad
    for im in images:
        y = pad if align == "top" else pad + (H - 2 * pad - im.height) // 2
        canvas.paste(im, (x, y))
        x += im.width + pad
    return canvas


def vstack(images: Sequence[Image.Image], pad: int = 8) -> Image.Image:
    """Images one under another, left-aligned."""
    W = max(i.width for i in images) + 2 * pad
    H = sum(i.height for i in images) + pad * (len(images) + 1)
    canvas = Image.new("RGB", (W, H), BACKGROUND)
    y = pad
    for im in images:
        canvas.paste(im, (pad, y))
        y += im.height + pad
    return canvas


def caption(image: Image.Image, text: str, size: int = 13) -> Image.Image:
    """``image`` with a line of text above it."""
    f = font(size)
    band = int(f.getbbox("Ágjy")[3]) + 6
    canvas = Image.new("RGB", (max(image.width, text_width(text, f) + 4), image.height + band),
                       BACKGROUND)
    ImageDraw.Draw(canvas).text((2, 2), text, fill=INK, font=f)
    canvas.paste(image, (0, band))
    return canvas


def bar_chart(names: Sequence[str], series: dict[str, Sequence[float]], *, title: str = "",
              log: bool = True, width: int = 560, bar: int = 7) -> Image.Image:
    """Horizontal bars, one group per name, one colour per series (log10 axis by default)."""
    from limner.visualization.plots import PALETTE

    f = font(11)
    values = [v for vs in series.values() for v in vs if v > 0 or not log]
    if not values:
        values = [1.0]
    lo = math.floor(math.log10(min(values))) if log else 0.0
    hi = math.ceil(math.log10(max(values))) if log else max(values)
    hi = hi if hi > lo else lo + 1
    lw = min(260, max(text_width(n, f) for n in names) + 8) if names else 40
    group = bar * len(series) + 3
    top = 24 + 16 * len(series)
    H = top + group * len(names) + 24
    canvas = Image.new("RGB", (width, H), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=INK, font=font(13))
    for k, name in enumerate(series):
        y = 24 + 16 * k
        draw.rectangle([lw, y + 3, lw + 14, y + 11], fill=PALETTE[k % len(PALETTE)])
        draw.text((lw + 20, y), name, fill=INK, font=f)
    x0, x1 = lw, width - 10

    def pos(v: float) -> float:
        if log:
            v = math.log10(v) if v > 0 else lo
        return x0 + (v - lo) / (hi - lo) * (x1 - x0)

    for t in range(int(lo), int(hi) + 1) if log else []:
        x = pos(10.0 ** t)
        draw.line([(x, top - 2), (x, H - 22)], fill=(225, 225, 225))
        draw.text((x, H - 20), f"1e{t}", fill=MUTED, font=f, anchor="mt")
    for i, name in enumerate(names):
        y = top + i * group
        draw.text((lw - 4, y + group / 2), shorten(name, f, lw - 8), fill=INK, font=f, anchor="rm")
        for k, vs in enumerate(series.values()):
            v = vs[i]
            draw.rectangle([x0, y + k * bar, max(x0 + 1, pos(v)), y + (k + 1) * bar - 1],
                           fill=PALETTE[k % len(PALETTE)])
    return canvas


def shorten(text: str, f, width: int, keep: str = "end") -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels, keeping its end (layer names) or
    its start (captions)."""
    if text_width(text, f) <= width:
        return text
    while text and text_width(text + "…" if keep == "start" else "…" + text, f) > width:
        text = text[:-1] if keep == "start" else text[1:]
    return text + "…" if keep == "start" else "…" + text


def colour_bar(vmax: float, label: str, width: int = 160, signed: bool = False) -> Image.Image:
    """A small legend strip for :func:`heat` (or :func:`diverging` with ``signed``)."""
    f = font(11)
    ramp = np.linspace(-1 if signed else 0, 1, width)[None, :].repeat(10, 0)
    strip = Image.fromarray(diverging(ramp, 1.0) if signed else heat(ramp, 1.0))
    canvas = Image.new("RGB", (width + 8, 40), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 0), label, fill=INK, font=f)
    canvas.paste(strip, (4, 15))
    draw.text((4, 27), f"{-vmax:.2g}" if signed else "0", fill=MUTED, font=f)
    draw.text((width + 4, 27), f"{vmax:.2g}", fill=MUTED, font=f, anchor="ra")
    return canvas
