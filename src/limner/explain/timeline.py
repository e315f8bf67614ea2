"""View "timeline": the same fixed-seed samples at every checkpoint, the loss and metric curves
beside them, and two checkpoints side by side.

Frames come from ``RUN/explain/timeline/step_NNNNNN.png`` (written by the live callback as
checkpoints land, see ``live.py``) and, for checkpoints still on disk without a frame, are
generated now with the same seeds and conditions. A run with neither falls back to the sample
grids in ``RUN/samples/``. The idea of watching fixed seeds through training is the sample grids
of every GAN paper since DCGAN (Radford et al. 2016); here they line up with the curves.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from limner.explain import render
from limner.explain.base import EXPLAIN_DIR, ExplainResult, ExplainRun, register_view
from limner.fsutil import atomic_write
from limner.generation.request import BatchRequest

FRAMES_DIR = "timeline"
REQUESTS_FILE = "requests.json"
_FRAME = re.compile(r"^step_(\d+)\.png$")
BOOKKEEPING = {"step", "time", "epoch", "kimg", "img_per_s", "skipped"}


# ---------------------------------------------------------------------------------------------
# Frames on disk: one PNG strip of N square cells per step
# ---------------------------------------------------------------------------------------------


def frames_dir(run_dir: Path) -> Path:
    return Path(run_dir) / EXPLAIN_DIR / FRAMES_DIR


def write_frame(run_dir: Path, step: int, images: torch.Tensor) -> Path:
    """Write uint8 images [N, C, H, W] as one strip ``step_NNNNNN.png`` (atomic)."""
    strip = np.concatenate([render.uint8_rgb(im) for im in images], axis=1)
    path = frames_dir(run_dir) / f"step_{step:06d}.png"
    return atomic_write(path, lambda f: Image.fromarray(strip).save(f, format="PNG"))


def read_frames(run_dir: Path) -> dict[int, np.ndarray]:
    """step -> RGB cells [N, H, W, 3] uint8 from the frame strips (through limner's decoder)."""
    from limner.data.decode import decode_image

    out = {}
    folder = frames_dir(run_dir)
    for path in sorted(folder.glob("step_*.png")) if folder.is_dir() else []:
        m = _FRAME.match(path.name)
        if m is None:
            continue
        arr = np.asarray(decode_image(path, mode="RGB"))
        side = arr.shape[0]
        if side == 0 or arr.shape[1] % side:
            continue
        out[int(m.group(1))] = arr.reshape(side, arr.shape[1] // side, side, 3).transpose(1, 0, 2, 3)
    return out


def write_requests(run_dir: Path, requests: list[BatchRequest], names: list[str] | None) -> Path:
    """Record the seeds and conditions the frames use (so later frames match)."""
    rows = [{"seeds": r.seeds, "prompts": r.prompts, "labels": r.labels} for r in requests]
    text = json.dumps({"requests": rows, "names": names})
    return atomic_write(frames_dir(run_dir) / REQUESTS_FILE, lambda f: f.write(text.encode()))


def read_requests(run_dir: Path) -> tuple[list[BatchRequest], list[str] | None] | None:
    path = frames_dir(run_dir) / REQUESTS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [BatchRequest(**row) for row in data["requests"]], data.get("names")
    except (ValueError, KeyError, TypeError):
        return None


def frame_requests(run: ExplainRun, count: int) -> tuple[list[BatchRequest], list[str] | None]:
    """The frames' requests: as recorded by the live callback, else the sample grids' own
    (the run's first ``count`` captions/labels, seeds 0, 1, ...)."""
    saved = read_requests(run.run_dir)
    if saved is not None:
        return saved
    from limner.workflows import sample_grid_requests

    from limner.models.registry import family_class

    family = family_class(run.family_name).from_config(run.config["family"]["config"])
    requests, names = sample_grid_requests(run.dataset, family.cond_kind)
    return _first(requests, count), (names[:count] if names else None)


def _first(requests: list[BatchRequest], count: int) -> list[BatchRequest]:
    out, left = [], count
    for r in requests:
        if left <= 0:
            break
        k = min(left, len(r.seeds))
        out.append(BatchRequest(seeds=r.seeds[:k], prompts=r.prompts[:k] if r.prompts else None,
                                labels=r.labels[:k] if r.labels else None))
        left -= k
    return out


@torch.no_grad()
def generate_frame(family: Any, requests: list[BatchRequest]) -> torch.Tensor:
    """uint8 [N, C, H, W]: the family's samples for ``requests`` with its current weights."""
    return torch.cat([family.generate(r).images.cpu() for r in requests])


# ---------------------------------------------------------------------------------------------
# The view
# ---------------------------------------------------------------------------------------------


@register_view("timeline", "fixed-seed samples at every checkpoint beside the loss and metric curves",
               params={
                   "count": "images per frame (default 8)",
                   "max_frames": "most steps shown in the strip, evenly spread (default 12)",
                   "compare": "two steps to show side by side, e.g. [500, 1500] (default: first and last)",
                   "generate_missing": "sample checkpoints on disk that have no frame yet (default true)",
                   "cell": "pixel size of one image in the strip (default 56)",
               })
def timeline(run: ExplainRun, count: int = 8, max_frames: int = 12,
             compare: tuple[int, int] | list[int] | None = None, generate_missing: bool = True,
             cell: int = 56) -> ExplainResult:
    """The timeline of ``run`` (see the module docstring)."""
    frames = {k: v[:count] for k, v in read_frames(run.run_dir).items()}
    sources = {k: "live" for k in frames}
    if generate_missing:
        missing = [s for s in run.checkpoint_steps() if s not in frames]
        if missing:
            requests, _ = frame_requests(run, count)
            for step in missing:
                loaded = run.load(step)
                images = generate_frame(loaded.family, requests)
                frames[step] = np.stack([render.uint8_rgb(im) for im in images])
                sources[step] = "generated"
    metrics = run.metrics()
    saved = read_requests(run.run_dir)
    names = (saved[1] or [])[:count] if saved else []
    result = ExplainResult("timeline", data={"steps": sorted(frames), "source": sources,
                                             "curves": curves(metrics), "conditions": names})
    charts = curve_charts(metrics)
    if frames:
        shown = _spread(sorted(frames), max_frames)
        strip = strip_image(frames, shown, cell, names)
        result.images["timeline"] = _beside(strip, charts)
        a, b = _compare_steps(frames, compare)
        result.images["compare"] = compare_image(frames, a, b)
        result.data["compare"] = [a, b]
        result.animations["timeline"] = [
            render.caption(render.grid([[render.cell(c, 64) for c in frames[s]]]), f"step {s}")
            for s in sorted(frames)]
    else:
        grids = sorted((run.run_dir / "samples").glob("step_*.png"))
        if not grids and not charts:
            from limner.errors import UsageError

            raise UsageError(f"RUN: {run.run_dir} has no frames, checkpoints, sample grids or "
                             "metrics yet")
        result.data["sample_grids"] = [g.name for g in grids]
        if grids:
            from limner.data.decode import decode_image

            result.animations["timeline"] = [render.caption(decode_image(g), g.stem) for g in grids]
        if charts:
            result.images["timeline"] = render.vstack(charts)
    return result


def _spread(steps: list[int], n: int) -> list[int]:
    """At most ``n`` of ``steps``, evenly spaced, first and last included."""
    if len(steps) <= n:
        return steps
    picks = np.linspace(0, len(steps) - 1, n).round().astype(int)
    return [steps[i] for i in sorted(set(picks.tolist()))]


def _compare_steps(frames: dict[int, np.ndarray], compare) -> tuple[int, int]:
    steps = sorted(frames)
    if compare is None:
        return steps[0], steps[-1]
    a, b = (int(s) for s in compare)
    for s in (a, b):
        if s not in frames:
            from limner.errors import UsageError

            raise UsageError(f"compare: no frame for step {s}; steps with frames: "
                             f"{', '.join(map(str, steps))}")
    return a, b


def strip_image(frames: dict[int, np.ndarray], steps: list[int], cell: int,
                names: list[str] | None = None) -> Image.Image:
    """Rows = steps, columns = the fixed seeds (headed by their prompt or class when known)."""
    rows = [[render.cell(c, cell) for c in frames[s]] for s in steps]
    f = render.font(12)
    cols = [render.shorten(str(n), f, cell + 2, keep="start") for n in names] if names else None
    return render.grid(rows, row_labels=[f"step {s}" for s in steps], col_labels=cols,
                       title="the same seeds through training")


def _beside(strip: Image.Image, charts: list[Image.Image]) -> Image.Image:
    """Charts right of a tall strip, under a short one."""
    if not charts:
        return strip
    if strip.height * 2 < sum(c.height for c in charts):
        return render.vstack([strip, render.hstack(charts)])
    return render.hstack([strip, render.vstack(charts)])


def compare_image(frames: dict[int, np.ndarray], a: int, b: int, cell: int = 80) -> Image.Image:
    """Two steps' frames side by side, in two columns of cells."""
    def block(step: int) -> Image.Image:
        cells = [render.cell(c, cell) for c in frames[step]]
        half = (len(cells) + 1) // 2
        return render.grid([cells[:half], cells[half:]], title=f"step {step}")

    return render.hstack([block(a), block(b)], pad=16)


def curves(metrics: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """name -> {"step": [...], "value": [...]} for every numeric metric but bookkeeping."""
    out: dict[str, dict[str, list[float]]] = {}
    for row in metrics:
        for key, value in row.items():
            if key in BOOKKEEPING or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            series = out.setdefault(key, {"step": [], "value": []})
            series["step"].append(row["step"])
            series["value"].append(float(value))
    return out


def _loss_keys(series: dict[str, Any]) -> list[str]:
    """Loss series; a GAN's ``loss`` repeats ``loss_G`` and is left out."""
    keys = [k for k in series if "loss" in k.lower()]
    if "loss" in keys and len(keys) > 1 and any(k.startswith("loss_") for k in keys):
        keys.remove("loss")
    return keys[:4]


def curve_charts(metrics: list[dict[str, Any]], size: tuple[int, int] = (520, 260)) -> list[Image.Image]:
    """Loss curves, then evaluation metrics (or the gradient norm when there are none)."""
    from limner.visualization.plots import line_chart

    series = curves(metrics)
    groups = [
        ("loss", _loss_keys(series)),
        ("evaluation", [k for k in series if k.startswith("eval/")][:4]),
    ]
    if not groups[1][1]:
        groups[1] = ("gradient norm", [k for k in series if k.startswith("grad_norm")][:4])
    charts = []
    for title, keys in groups:
        keys = [k for k in keys if series[k]["step"]]
        if keys:
            charts.append(line_chart({k: (series[k]["step"], series[k]["value"]) for k in keys},
                                     title=title, xlabel="step", size=size))
    return charts
