"""Small line charts drawn with Pillow (no plotting library needed): metric curves for
benchmarks, reports and, later, the studio's training views.

``line_chart`` draws one or more named series on shared axes with "nice" ticks (1, 2, 5 x 10^k
steps, as most plotting libraries choose them), an optional log-scale x axis, a legend and axis
titles, and returns a PIL image.
"""

from __future__ import annotations

import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["line_chart", "nice_ticks"]

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"tick range must be finite, got {low}..{high}")
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(low / step) * step
    return [start + i * step for i in range(int(math.ceil((high - start) / step - 1e-9)) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.2g}"


class _Axes:
    """Maps data coordinates to pixels inside the plot box."""

    def __init__(self, box: tuple[int, int, int, int], xr: tuple[float, float], yr: tuple[float, float], logx: bool):
        self.box, self.xr, self.yr, self.logx = box, xr, yr, logx

    def x(self, v: float) -> float:
        lo, hi = (math.log10(r) for r in self.xr) if self.logx else self.xr
        v = math.log10(v) if self.logx else v
        return self.box[0] + (v - lo) / (hi - lo or 1) * (self.box[2] - self.box[0])

    def y(self, v: float) -> float:
        lo, hi = self.yr
        return self.box[3] - (v - lo) / (hi - lo or 1) * (self.box[3] - self.box[1])


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
               xlabel: str = "", ylabel: str = "", logx: bool = False, size: tuple[int, int] = (640, 400),
               xticks: Sequence[float] | None = None) -> Image.Image:
    """Named (xs, ys) series on one chart; points are marked, lines join them in x order."""
    if not series:
        raise ValueError("line_chart needs at least one series")
    xs = [x for xs_, _ in series.values() for x in xs_]
    ys = [y for _, ys_ in series.values() for y in ys_]
    if logx and min(xs) <= 0:
        raise ValueError("logx needs positive x values")
    yt = nice_ticks(min(0.0, min(ys)), max(ys))
    xt = list(xticks) if xticks is not None else (sorted(set(xs)) if logx else nice_ticks(min(xs), max(xs)))
    image = Image.new("RGB", size, "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=13)
    box = (70, 40 if title else 20, size[0] - 20, size[1] - 55)
    xr = (min(xs + xt), max(xs + xt))
    ax = _Axes(box, xr, (yt[0], yt[-1]), logx)
    _draw_frame(draw, font, ax, xt, yt, title, xlabel, ylabel, size)
    for i, (name, (sx, sy)) in enumerate(series.items()):
        _draw_series(draw, ax, sx, sy, PALETTE[i % len(PALETTE)])
        _legend_entry(draw, font, box, i, name, PALETTE[i % len(PALETTE)])
    return image


def _draw_frame(draw: ImageDraw.ImageDraw, font, ax: _Axes, xt: Sequence[float], yt: Sequence[float],
                title: str, xlabel: str, ylabel: str, size: tuple[int, int]) -> None:
    x0, y0, x1, y1 = ax.box
    for v in yt:
        y = ax.y(v)
        draw.line([(x0, y), (x1, y)], fill=(230, 230, 230))
        draw.text((x0 - 6, y), _fmt(v), fill="black", font=font, anchor="rm")
    for v in xt:
        x = ax.x(v)
        draw.line([(x, y1), (x, y1 + 4)], fill="black")
        draw.text((x, y1 + 6), _fmt(v), fill="black", font=font, anchor="mt")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    if title:
        draw.text(((x0 + x1) / 2, 8), title, fill="black", font=font, anchor="mt")
    draw.text(((x0 + x1) / 2, size[1] - 8), xlabel, fill="black", font=font, anchor="mb")
    draw.text((8, (y0 + y1) / 2), ylabel, fill="black", font=font, anchor="lm")


def _draw_series(draw: ImageDraw.ImageDraw, ax: _Axes, xs: Sequence[float], ys: Sequence[float],
                 colour: tuple[int, int, int]) -> None:
    points = sorted(zip(xs, ys))
    pixels = [(ax.x(x), ax.y(y)) for x, y in points]
    if len(pixels) > 1:
        draw.line(pixels, fill=colour, width=2)
    for px, py in pixels:
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)


def _legend_entry(draw: ImageDraw.ImageDraw, font, box: tuple[int, int, int, int], i: int, name: str,
                  colour: tuple[int, int, int]) -> None:
    x, y = box[2] - 180, box[1] + 8 + 18 * i
    draw.line([(x, y + 7), (x + 20, y + 7)], fill=colour, width=3)
    draw.text((x + 26, y), name, fill="black", font=font)
