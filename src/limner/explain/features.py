"""View "features": the feature hierarchy of the run's own network.

Forward hooks on each level of the network the family's hooks name (the denoiser U-Net, D for
a GAN, the VAE's encoder, the token transformer of MaskGIT and autoregressive runs) capture its
feature maps for one input image; each level shows its strongest channels (by their mean
positive activation), from the first layers' edges and colours to deeper layers' parts. For one
chosen channel, the training images are searched for the patches that excite it most, cropped
around the peak at the size of the level's stride. This is the analysis of Zeiler & Fergus
(2014, "Visualizing and Understanding Convolutional Networks"), without their deconvnet
projection, and the per-layer maps of CNN Explainer (Wang et al. 2020).

Token transformers (``limner.explain.tokens``): the image is first tokenized by the run's own
VQ-VAE; the levels are the token embedding and the output of each block, one hidden state per
token laid out on the token grid (8 x 8 for the small presets) and drawn over the image, each
map position covering its token's patch. Their patches outline the token's own patch (the crop
adds its neighbours). Attention is a transformer's own "feature", so the view also shows, per
block, where one token looks: its self-attention over the grid (heads averaged) and the share
it gives the condition prefix (the "Transformer Explainer" readout, Cho et al. 2024, on the
user's own model). ``self_attention.png`` holds those maps.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from limner.errors import UsageError
from limner.explain import render
from limner.explain.base import ExplainResult, ExplainRun, register_view
from limner.explain.hooks import FeatureProbe, hooks_for


@contextlib.contextmanager
def captured(levels: list[tuple[str, nn.Module]], to_maps: Callable[[Tensor], Tensor] | None = None
             ) -> Iterator[dict[str, Tensor]]:
    """Within the block, each level's last output [B, C, h, w] is kept under its name
    (``to_maps`` first turns an output of another shape, e.g. tokens [B, L, D], into maps)."""
    outputs: dict[str, Tensor] = {}
    handles = []
    for name, module in levels:
        def hook(_m, _inp, out, name=name):
            t = out[0] if isinstance(out, (tuple, list)) else out
            t = t.detach()
            outputs[name] = (to_maps(t) if to_maps is not None else t).float().cpu()
        handles.append(module.register_forward_hook(hook))
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def level_activations(probe: FeatureProbe, images: Tensor) -> dict[str, Tensor]:
    """name -> feature maps [B, C, h, w] of every level for images [B, C, H, W] in [-1, 1]."""
    with captured(probe.levels, probe.to_maps) as outputs:
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
                   "search": "training images searched for those patches (default 256; 64 for "
                             "token models, whose every token is a candidate)",
                   "token": "token models: the token whose self-attention is shown, as a raster "
                            "index (default: the centre of the grid)",
               })
def features(run: ExplainRun, image: str | Path | None = None, index: int | None = None,
             step: int | str | None = None, top: int = 6, level: str | None = None,
             channel: int | None = None, patches: int = 8, search: int | None = None,
             token: int | None = None) -> ExplainResult:
    """The feature view (see the module docstring)."""
    loaded = run.load(step)
    family = loaded.family
    probe = hooks_for(family).feature_probe(family)
    if probe is None:
        raise UsageError(f"view 'features' does not know the network of a {run.family_name!r} run")
    if token is not None and not probe.attention_blocks:
        raise UsageError(f"token: only token models (maskgit, autoregressive) have tokens; this is a "
                         f"{run.family_name!r} run")
    x, source = _input_image(run, image, index)
    if probe.attention_blocks:
        acts, attention = _token_levels(probe, x.to(run.device), token)
    else:
        acts, attention = level_activations(probe, x.to(run.device)), None
    names = list(acts)
    level = level or probe.default_level or _default_level(names)
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
    found = top_patches(run, probe, level, channel, patches, probe.search if search is None else int(search))
    result = ExplainResult("features", data={
        "input": source, "step": loaded.step, "network": probe.what,
        "levels": [{"name": n, "shape": list(acts[n].shape[1:]), "top_channels": tops[n],
                    "mean_activation": [float(peaks[n][c]) for c in tops[n]]} for n in names],
        "channel": {"level": level, "channel": channel, "patches": found["rows"]},
    })
    over = x[0] if probe.token_grid else None
    result.images["features"] = render.hstack([
        hierarchy_image(x[0], acts, tops, probe.what, over=over),
        patches_image(found, level, channel),
    ])
    if attention is not None:
        result.data["self_attention"] = attention
        result.images["self_attention"] = self_attention_image(x[0], attention, probe.token_grid)
    return result


@torch.no_grad()
def _token_levels(probe: FeatureProbe, x: Tensor, token: int | None
                  ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A token transformer's level maps and, from the same forward pass, where ``token`` looks
    in each block (its self-attention over the grid and its share for the condition prefix)."""
    from limner.explain.tokens import capture_self_attention, query_attention

    g = int(probe.token_grid)
    query = g * (g // 2) + g // 2 if token is None else int(token)
    if not 0 <= query < g * g:
        raise UsageError(f"token: must be a raster index in 0..{g * g - 1} of the {g}x{g} grid")
    with captured(probe.levels, probe.to_maps) as outputs, \
            capture_self_attention(probe.attention_blocks) as capture:
        probe.run(x)
    acts = {name: outputs[name] for name, _ in probe.levels if name in outputs}
    blocks = []
    for name, _ in probe.attention_blocks:
        grid_map, prefix = query_attention(capture, name, query, g)
        blocks.append({"level": name, "map": grid_map, "prefix": prefix,
                       "prefix_share": float(prefix.sum()), "total": float(grid_map.sum() + prefix.sum())})
    return acts, {"token": query, "row": query // g, "col": query % g, "grid": g, "blocks": blocks}


def _default_level(names: list[str]) -> str:
    """The deepest level before the network turns back up (its middle), else the last."""
    for n in names:
        if n.startswith("middle"):
            return n
    return names[len(names) // 2] if len(names) > 2 else names[-1]


def hierarchy_image(x: Tensor, acts: dict[str, Tensor], tops: dict[str, list[int]], what: str,
                    size: int = 56, over: Tensor | None = None) -> Image.Image:
    """Rows = levels: each level's strongest channels (heat maps, each on its own scale);
    with ``over`` (an image [C, H, W]), each map is upsampled and drawn over a faded copy of it."""
    rows, labels = [], []
    for name, a in acts.items():
        chans = tops[name]
        cells = [render.caption(render.cell(_map_rgb(a[0, c].clamp(min=0), over), size), f"ch {c}", 11)
                 for c in chans]  # each map on its own scale: where the channel fires
        rows.append(cells)
        labels.append(f"{name} ({a.shape[1]} ch)")
    maps = render.grid(rows, row_labels=labels, title=f"strongest feature maps per level: {what}")
    shown = render.caption(render.cell(render.image_rgb(x), 2 * size), "the input image")
    return render.hstack([shown, maps], align="top")


def _map_rgb(m: Tensor, over: Tensor | None, vmax: float | None = None) -> np.ndarray:
    """A non-negative map as a heat map, or (``over``) upsampled over a faded grey copy of the
    image, each map cell covering its token's patch."""
    if over is None:
        return render.heat(m, vmax)
    side = over.shape[-1]
    big = torch.nn.functional.interpolate(m[None, None].float(), size=(side, side), mode="nearest")[0, 0]
    grey = render.image_rgb(over).astype(float).mean(axis=2, keepdims=True).repeat(3, axis=2)
    return (0.3 * grey + 0.7 * render.heat(big, vmax).astype(float)).clip(0, 255).astype(np.uint8)


def self_attention_image(x: Tensor, attention: dict[str, Any], grid: int, size: int = 96) -> Image.Image:
    """Per block, where the chosen token (outlined) looks: its attention over the grid, drawn
    over the image (one colour scale for all blocks), with the share that went to the prefix."""
    top = max(float(b["map"].max()) for b in attention["blocks"]) if attention["blocks"] else 1.0
    shown = render.cell(render.image_rgb(x), size)
    cells = [render.caption(_outline(shown, attention["row"], attention["col"], grid), "the input image")]
    for b in attention["blocks"]:
        im = render.cell(_map_rgb(b["map"], x, top), size)
        cells.append(render.caption(_outline(im, attention["row"], attention["col"], grid),
                                    f"{b['level']}: prefix {b['prefix_share']:.0%}", 11))
    return render.grid([cells], title=f"where token {attention['token']} (row {attention['row']}, col "
                                      f"{attention['col']}, outlined) looks: self-attention per block, "
                                      "heads averaged")


def _outline(image: Image.Image, row: int, col: int, grid: int, colour=(0, 200, 255)) -> Image.Image:
    """``image`` with the cell (row, col) of a ``grid`` x ``grid`` layout outlined."""
    out = image.copy()
    w, h = out.width / grid, out.height / grid
    ImageDraw.Draw(out).rectangle([col * w, row * h, (col + 1) * w - 1, (row + 1) * h - 1], outline=colour)
    return out


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
        with captured([(level, dict(probe.levels)[level])], probe.to_maps) as out:
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
    crops, rows = [], []
    for value, i, y, x in best[:k]:
        cy, cx = int((y + 0.5) * stride), int((x + 0.5) * stride)
        top = min(max(0, cy - size // 2), res - size)
        left = min(max(0, cx - size // 2), res - size)
        crop = data[i][top : top + size, left : left + size]
        row: dict[str, Any] = {"index": i, "activation": value}
        box = None
        if probe.token_grid:  # the token's own patch inside the crop
            row["token"] = y * side + x
            box = (round(y * stride) - top, round(x * stride) - left, round(stride))
        crops.append((value, i, crop, box))
        rows.append(row)
    return {"crops": crops, "rows": rows, "patch_size": size}


def patches_image(found: dict[str, Any], level: str, channel: int, size: int = 56) -> Image.Image:
    cells = []
    outlined = False
    for value, i, crop, box in found["crops"]:
        arr = crop if crop.shape[2] == 3 else np.repeat(crop, 3, axis=2)
        im = render.cell(np.ascontiguousarray(arr), size)
        if box is not None:  # the token's patch: (top, left, side) in crop pixels
            s = size / crop.shape[0]
            top, left, side = box
            ImageDraw.Draw(im).rectangle([left * s, top * s, (left + side) * s - 1, (top + side) * s - 1],
                                         outline=(0, 200, 255))
            outlined = True
        cells.append(render.caption(im, f"#{i} {value:.2g}", 11))
    half = (len(cells) + 1) // 2
    title = f"training patches ({found['patch_size']}px) that excite {level} ch {channel} most"
    if outlined:
        title += " (outlined: the token's own patch)"
    return render.grid([cells[:half], cells[half:]] if len(cells) > 4 else [cells], title=title)
