"""View "features": the feature hierarchy of the run's own network.

Forward hooks on each level of the network the family's hooks name (the denoiser U-Net, D for
a GAN, the VAE's encoder) capture its feature maps for one input image; each level shows its
strongest channels (by their mean positive activation), from the first layers' edges and colours to
deeper layers' parts. For one chosen channel, the training images are searched for the patches
that excite it most, cropped around the peak at the size of the level's stride. This is the
analysis of Zeiler & Fergus (2014, "Visualizing and Understanding Convolutional Networks"),
without their deconvnet projection, and the per-layer maps of CNN Explainer (Wang et al. 2020).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from limner.errors import UsageError
from limner.explain import render
from limner.explain.base import ExplainResult, ExplainRun, register_view
from limner.explain.hooks import FeatureProbe, hooks_for


@contextlib.contextmanager
def captured(levels: list[tuple[str, nn.Module]]) -> Iterator[dict[str, Tensor]]:
    """Within the block, each level's last output [B, C, h, w] is kept under its name."""
    outputs: dict[str, Tensor] = {}
    handles = []
    for name, module in levels:
        def hook(_m, _inp, out, name=name):
            t = out[0] if isinstance(out, (tuple, list)) else out
            outputs[name] = t.detach().float().cpu()
        handles.append(module.register_forward_hook(hook))
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def level_activations(probe: FeatureProbe, images: Tensor) -> dict[str, Tensor]:
    """name -> feature maps [B, C, h, w] of every level for images [B, C, H, W] in [-1, 1]."""
    with captured(probe.levels) as outputs:
        probe.run(images)
    return {name: outputs[name] for name, _ in probe.levels if name in outputs}


def _input_image(run: ExplainRun, image: str | Path | None, index: int | None) -> tuple[Tensor, str]:
    """One image [1, C, H, W] in [-1, 1]: a file (decoded by limner, resized to the run's
    resolution) or a training image (default: index 0)."""
    cfg = run.config["data"]
    res, channels = int(cfg["resolution"]), int(cfg["channels"])
    if image is not None:
        from limner.data.decode import decode_image

        pil = decode_image(Path(image), mode="L" if channels == 1 else "RGB")
        pil = pil.resize((res, res), Image.BICUBIC)
        arr = np.asarray(pil, dtype=np.uint8).reshape(res, res, channels)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1, str(image)
    i = 0 if index is None else int(index)
    if not 0 <= i < len(run.dataset.images):
        raise UsageError(f"index: must be in 0..{len(run.dataset.images) - 1}")
    arr = run.dataset.images[i]
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 127.5 - 1, f"training image {i}"


@register_view("features", "the strongest feature maps of each network level for an image, and the "
                           "training patches that excite one channel most",
               params={
                   "image": "an image file to look at (default: a training image, see index)",
                   "index": "the training image to look at (default 0)",
                   "step": "checkpoint (default: the newest)",
                   "top": "strongest channels shown per level (default 6)",
                   "level": "level whose channel is searched for in the training set (default: the deepest encoder-side level)",
                   "channel": "that channel (default: the level's strongest for the image)",
                   "patches": "training patches shown for the channel (default 8)",
                   "search": "training images searched for those patches (default 256)",
               })
def features(run: ExplainRun, image: str | Path | None = None, index: int | None = None,
             step: int | str | None = None, top: int = 6, level: str | None = None,
             channel: int | None = None, patches: int = 8, search: int = 256) -> ExplainResult:
    """The feature view (see the module docstring)."""
    loaded = run.load(step)
    family = loaded.family
    probe = hooks_for(family).feature_probe(family)
    if probe is None:
        raise UsageError(f"view 'features' does not know the network of a {run.family_name!r} run")
    x, source = _input_image(run, image, index)
    acts = level_activations(probe, x.to(run.device))
    names = list(acts)
    level = level or _default_level(names)
    if level not in acts:
        raise UsageError(f"level: {level!r} is not one of {', '.join(names)}")
    # strength of a channel: its mean positive activation over the image (a lone spike does not
    # make a channel "strong")
    peaks = {n: a[0].clamp(min=0).flatten(1).mean(1) for n, a in acts.items()}  # [C] per level
    tops = {n: peaks[n].argsort(descending=True)[:top].tolist() for n in names}
    if channel is None:
        channel = tops[level][0]
    if not 0 <= channel < acts[level].shape[1]:
        raise UsageError(f"channel: level {level!r} has channels 0..{acts[level].shape[1] - 1}")
    found = top_patches(run, probe, level, channel, patches, search)
    result = ExplainResult("features", data={
        "input": source, "step": loaded.step, "network": probe.what,
        "levels": [{"name": n, "shape": list(acts[n].shape[1:]), "top_channels": tops[n],
                    "mean_activation": [float(peaks[n][c]) for c in tops[n]]} for n in names],
        "channel": {"level": level, "channel": channel, "patches": found["rows"]},
    })
    result.images["features"] = render.hstack([
        hierarchy_image(x[0], acts, tops, probe.what),
        patches_image(found, level, channel),
    ])
    return result


def _default_level(names: list[str]) -> str:
    """The deepest level before the network turns back up (its middle), else the last."""
    for n in names:
        if n.startswith("middle"):
            return n
    return names[len(names) // 2] if len(names) > 2 else names[-1]


def hierarchy_image(x: Tensor, acts: dict[str, Tensor], tops: dict[str, list[int]], what: str,
                    size: int = 56) -> Image.Image:
    """Rows = levels: each level's strongest channels (heat maps, each on its own scale)."""
    rows, labels = [], []
    for name, a in acts.items():
        chans = tops[name]
        cells = [render.caption(render.cell(render.heat(a[0, c].clamp(min=0)), size), f"ch {c}", 11)
                 for c in chans]  # each map on its own scale: where the channel fires
        rows.append(cells)
        labels.append(f"{name} ({a.shape[1]} ch)")
    maps = render.grid(rows, row_labels=labels, title=f"strongest feature maps per level: {what}")
    shown = render.caption(render.cell(render.image_rgb(x), 2 * size), "the input image")
    return render.hstack([shown, maps], align="top")


@torch.no_grad()
def top_patches(run: ExplainRun, probe: FeatureProbe, level: str, channel: int, k: int,
                search: int, batch: int = 64) -> dict[str, Any]:
    """The ``k`` training images whose ``channel`` at ``level`` peaks highest, with the patch
    around each peak (side: 3 x the level's stride, at least 5 pixels)."""
    data = run.dataset.images
    n = min(search, len(data))
    idx = np.sort(np.random.default_rng(0).choice(len(data), size=n, replace=False))
    best: list[tuple[float, int, int, int]] = []  # (value, index, y, x)
    side = 0
    for a in range(0, n, batch):
        rows = idx[a : a + batch]
        x = torch.from_numpy(np.ascontiguousarray(data[rows])).permute(0, 3, 1, 2).float() / 127.5 - 1
        with captured([(level, dict(probe.levels)[level])]) as out:
            probe.run(x.to(run.device))
        m = out[level][:, channel]  # [B, h, w]
        side = m.shape[-1]
        flat = m.flatten(1)
        vals, pos = flat.max(1)
        best += [(float(v), int(i), int(p) // side, int(p) % side) for v, i, p in zip(vals, rows, pos)]
    best.sort(key=lambda t: -t[0])
    res = data.shape[1]
    stride = res / side if side else 1
    size = int(min(res, max(5, round(3 * stride))))
    crops = []
    for value, i, y, x in best[:k]:
        cy, cx = int((y + 0.5) * stride), int((x + 0.5) * stride)
        top = min(max(0, cy - size // 2), res - size)
        left = min(max(0, cx - size // 2), res - size)
        crops.append((value, i, data[i][top : top + size, left : left + size]))
    return {"crops": crops, "rows": [{"index": i, "activation": v} for v, i, _ in crops],
            "patch_size": size}


def patches_image(found: dict[str, Any], level: str, channel: int, size: int = 56) -> Image.Image:
    cells = []
    for value, i, crop in found["crops"]:
        arr = crop if crop.shape[2] == 3 else np.repeat(crop, 3, axis=2)
        cells.append(render.caption(render.cell(np.ascontiguousarray(arr), size), f"#{i} {value:.2g}", 11))
    half = (len(cells) + 1) // 2
    return render.grid([cells[:half], cells[half:]] if len(cells) > 4 else [cells],
                       title=f"training patches ({found['patch_size']}px) that excite {level} ch {channel} most")
