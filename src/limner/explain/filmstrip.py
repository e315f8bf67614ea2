"""View "filmstrip": a generated image replayed from its record, step by step.

The PNG's generation record (``limner.generation.pngmeta``) is replayed with
``limner.generation.pipeline.regenerate`` and a per-step callback: for diffusion samplers each
step's x_t and the denoiser's predicted clean image D(x_t; sigma) (Karras et al. 2022; the
"denoised" previews of k-diffusion's callbacks), for token samplers the order in which
positions were unmasked (MaskGIT, Chang et al. 2022). The last frame is the replayed image, and
the view checks it against the PNG's pixels: the filmstrip is the history of that very image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from limner.errors import UsageError
from limner.explain import render
from limner.explain.base import ExplainResult, ExplainRun, register_view
from limner.explain.hooks import hooks_for


def replay(run: ExplainRun, image: str | Path) -> tuple[Any, list[dict[str, Any]], Image.Image, np.ndarray]:
    """Replay the image's record; returns (record, per-step frames of its row, the replayed
    image, the PNG's own pixels)."""
    from limner.data.decode import decode_image
    from limner.generation.pipeline import regenerate
    from limner.generation.pngmeta import read_record
    from limner.models.registry import family_class

    path = Path(image)
    if not path.is_file():
        raise UsageError(f"image: {path} does not exist")
    record = read_record(path)
    if record.family != run.family_name:
        raise UsageError(f"image: {path} was made by a {record.family!r} run, {run.run_dir} is a "
                         f"{run.family_name!r} run")
    family = family_class(run.family_name).from_config(run.config["family"]["config"])
    hooks = hooks_for(family)
    frames: list[dict[str, Any]] = []

    def on_step(info: dict[str, Any]) -> None:
        row = record.index
        frame = {k: v[row : row + 1].detach().float().cpu() for k, v in hooks.film_frames(family, info).items()}
        frame["i"] = int(info.get("i", len(frames)))
        if "sigma" in info:
            frame["sigma"] = float(info["sigma"])
        mask = hooks.token_mask(family, info)
        if mask is not None:
            frame["mask"] = mask[row].detach().cpu().bool()
        frames.append(frame)

    out = regenerate(record, run=str(run.run_dir), device=str(run.device), callback=on_step)
    mode = "L" if out.image.mode == "L" else "RGB"
    original = np.asarray(decode_image(path, mode=mode))
    return record, frames, out.image, original


@register_view("filmstrip", "a generated image replayed from its record: x_t and the predicted "
                            "clean image at every sampler step (token models: the unmasking order)",
               params={
                   "image": "a PNG limner generated from this run (its record is replayed; required)",
                   "max_frames": "most sampler steps shown, evenly spread, first and last kept (default 10)",
                   "cell": "pixel size of each frame (default 72)",
               })
def filmstrip(run: ExplainRun, image: str | Path | None = None, max_frames: int = 10,
              cell: int = 72) -> ExplainResult:
    """The filmstrip view (see the module docstring)."""
    if image is None:
        raise UsageError("filmstrip needs image=PATH: a PNG generated from this run "
                         "(limner sample RUN --out DIR writes them)")
    record, frames, final, original = replay(run, image)
    final_arr = np.asarray(final)
    same = final_arr.shape == original.shape and bool(np.array_equal(final_arr, original))
    result = ExplainResult("filmstrip", data={
        "image": str(image), "seed": record.seed, "prompt": record.prompt, "label": record.label,
        "sampler": record.sampler, "steps": len(frames), "checkpoint_step": record.step,
        "sigmas": [f.get("sigma") for f in frames],
        "last_frame_equals_image": same,
    })
    order = unmask_order(frames)
    if order is not None:
        result.data["unmask_order"] = order.tolist()
    shown = _spread(list(range(len(frames))), max_frames)
    result.images["filmstrip"] = strip(frames, shown, final_arr, cell, order)
    result.animations["filmstrip"] = [_gif_frame(frames[i], cell) for i in range(len(frames))] + [
        render.caption(render.cell(_as_rgb(final_arr), cell * 2), "final image")]
    return result


def _spread(idx: list[int], n: int) -> list[int]:
    if len(idx) <= n:
        return idx
    picks = np.linspace(0, len(idx) - 1, n).round().astype(int)
    return [idx[i] for i in sorted(set(picks.tolist()))]


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


def _show(x: Tensor, sigma: float | None) -> np.ndarray:
    """x_t divided by sqrt(1 + sigma^2), so noise and image share the display range."""
    scale = (1 + sigma**2) ** 0.5 if sigma is not None else 1.0
    return render.image_rgb(x[0] / scale)


def strip(frames: list[dict[str, Any]], shown: list[int], final: np.ndarray, cell: int,
          order: Tensor | None) -> Image.Image:
    """Rows: x_t and the predicted clean image per shown step, then the final image."""
    names = [k for k in frames[0] if isinstance(frames[0][k], Tensor) and frames[0][k].dim() == 4] if frames else []
    rows, labels = [], []
    for name in names:
        row = [render.cell(_show(frames[i][name], frames[i].get("sigma") if name == "x_t" else None), cell)
               for i in shown]
        rows.append(row + [render.cell(_as_rgb(final), cell)])
        labels.append(name)
    cols = [f"{frames[i]['i'] + 1}" + (f": {frames[i]['sigma']:.2g}" if "sigma" in frames[i] else "")
            for i in shown] + ["final"]
    if rows:
        image = render.grid(rows, row_labels=labels, col_labels=cols,
                            title="the image's history, step: sigma. Noisy x_t (scaled by "
                                  "1/sqrt(1+sigma^2)) and the predicted clean image")
    else:  # a sampler with no picture per step (autoregressive): the image and its order
        image = render.caption(render.cell(_as_rgb(final), cell * 2), "final image")
    if order is None:
        return image
    size = final.shape[0]
    heat = torch.nn.functional.interpolate(order[None, None].float(), size=(size, size), mode="nearest")[0, 0]
    legend = render.caption(render.cell(render.heat(heat), cell * 2), "unmasking order (dark = first)")
    return render.hstack([image, legend])


def _gif_frame(frame: dict[str, Any], cell: int) -> Image.Image:
    cells = [render.cell(_show(v, frame.get("sigma") if k == "x_t" else None), cell * 2)
             for k, v in frame.items() if isinstance(v, Tensor) and v.dim() == 4]
    title = f"step {frame['i'] + 1}" + (f", sigma {frame['sigma']:.3g}" if "sigma" in frame else "")
    return render.caption(render.hstack(cells) if cells else Image.new("RGB", (cell, cell), "white"), title)


def unmask_order(frames: list[dict[str, Any]]) -> Tensor | None:
    """[h, w]: the step at which each position stopped being masked (token samplers)."""
    masks = [f["mask"] for f in frames if "mask" in f]
    if not masks:
        return None
    order = torch.full(masks[0].shape, len(masks), dtype=torch.int64)
    for k, m in enumerate(masks):
        newly = (~m) & (order == len(masks))
        order[newly] = k
    return order
