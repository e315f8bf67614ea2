"""The PNG report of an evaluation: metric table, sample grid, memorization sheet.

One picture a user can glance at (and paste into an issue): the numbers with the extractor
that produced them, what the samples look like, and the generated images that sit closest to a
training image, each next to that training image with the distance ratio under it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from limner.data.dataset import ImageDataset
from limner.visualization.grids import make_grid, save_png_atomic

__all__ = ["write_report", "memorization_sheet", "metric_lines"]

PAD = 12
SHEET_PAIRS = 8
GRID_IMAGES = 32

_LABELS = {
    "fid": "FID", "kid": "KID", "precision": "precision", "recall": "recall", "density": "density",
    "coverage": "coverage", "inception_score": "Inception Score", "near_copy_share": "near-copies (feature)",
    "near_copy_share_pixel": "near-copies (pixel)", "clip_score": "CLIP-style score",
    "retrieval_top1": "prompt retrieval top-1",
}


def metric_lines(result: dict[str, Any]) -> list[str]:
    """The metric table as text lines (also printed by the CLI)."""
    return [f"{label:<24} {text}" for label, text in metric_rows(result)]


def metric_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, formatted value) for each metric present in the result."""
    m = result["metrics"]
    rows = []
    for key, label in _LABELS.items():
        if key not in m:
            continue
        value = m[key]
        if key == "kid":
            text = f"{value:.5f} ± {m.get('kid_std', float('nan')):.5f}"
        elif key == "inception_score":
            text = f"{value:.3f} ± {m.get('inception_score_std', float('nan')):.3f}"
        elif key.startswith("near_copy") or key == "retrieval_top1":
            text = f"{100 * value:.1f} %"
        else:
            text = f"{value:.4f}" if abs(value) < 100 else f"{value:.2f}"
        rows.append((label, text))
    return rows


def _header_lines(result: dict[str, Any]) -> list[str]:
    src = result.get("source", {})
    what = src.get("run") or src.get("images") or "samples"
    step = f" (step {src['step']})" if src.get("step") is not None else ""
    ref = result["reference"]
    return [f"limner eval: {what}{step}",
            f"{result['samples']['count']} samples vs {ref['count']} training images, extractor {result['extractor']['id']}",
            ""]


def _text_panel(lines: Sequence[str | tuple[str, str]], width: int, size: int = 14) -> Image.Image:
    """Text lines on white; (label, value) rows get their values in one aligned column (the
    default font is proportional, so padding with spaces would not align them)."""
    font = ImageFont.load_default(size=size)
    line_h = int(font.getbbox("Ágjy")[3]) + 4
    labels = [line[0] for line in lines if isinstance(line, tuple)]
    column = max((int(font.getlength(label)) for label in labels), default=0) + 3 * PAD
    widths = [column + int(font.getlength(line[1])) if isinstance(line, tuple) else int(font.getlength(line))
              for line in lines]
    width = max(width, max(widths, default=0) + 2 * PAD)
    panel = Image.new("RGB", (width, line_h * len(lines) + 2 * PAD), "white")
    draw = ImageDraw.Draw(panel)
    for i, line in enumerate(lines):
        y = PAD + i * line_h
        if isinstance(line, tuple):
            draw.text((PAD, y), line[0], fill=(0, 0, 0), font=font)
            draw.text((PAD + column, y), line[1], fill=(0, 0, 0), font=font)
        else:
            draw.text((PAD, y), line, fill=(0, 0, 0), font=font)
    return panel


def memorization_sheet(samples: torch.Tensor, dataset: ImageDataset, result: Any, ref_indices: np.ndarray,
                       pairs: int = SHEET_PAIRS) -> Image.Image:
    """Pairs (generated | nearest training image) for the samples with the smallest feature ratio."""
    worst = list(result.worst(min(pairs, len(samples))))
    cells, labels = [], []
    for i in worst:
        train_row = int(ref_indices[int(result.nn_index_feature[i])])
        train = torch.from_numpy(dataset.images[train_row]).permute(2, 0, 1)
        cells += [samples[i], _as_channels(train, samples.shape[1])]
        labels += [f"sample {i}", f"train #{train_row}, ratio {float(result.ratio_feature[i]):.2f}"]
    return make_grid(torch.stack(cells), nrow=2 * min(4, len(worst)), labels=labels)


def _as_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    return image.expand(channels, -1, -1) if image.shape[0] == 1 and channels == 3 else image


def _grid_labels(prompts: list[str] | None, labels: list[int] | None, names: list[str] | None, n: int) -> list[str] | None:
    if prompts:
        return prompts[:n]
    if labels:
        return [names[k] if names and k < len(names) else f"class {k}" for k in labels[:n]]
    return None


def write_report(path: str | os.PathLike, evaluation: Any, dataset: ImageDataset) -> Path:
    """Compose header + metric table, sample grid and memorization sheet into one PNG."""
    result, samples = evaluation.result, evaluation.samples
    n = min(GRID_IMAGES, len(samples.images))
    grid = make_grid(samples.images[:n], nrow=min(8, n),
                     labels=_grid_labels(samples.prompts, samples.labels, dataset.class_names, n))
    sheet = memorization_sheet(samples.images, dataset, evaluation.memorization, evaluation.reference.indices)
    width = max(grid.width, sheet.width)
    parts = [_text_panel([*_header_lines(result), *metric_rows(result)], width),
             _text_panel(["samples (seeded; first %d)" % n], width), grid,
             _text_panel(["closest to a training image (generated | nearest training image; ratio < "
                          f"{result['memorization'].get('threshold', 1 / 3):.2f} = near-copy)"], width), sheet]
    return _stack(parts, Path(path))


def _stack(parts: list[Image.Image], path: Path) -> Path:
    width = max(p.width for p in parts)
    canvas = Image.new("RGB", (width, sum(p.height for p in parts)), "white")
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height
    return save_png_atomic(canvas, path)
