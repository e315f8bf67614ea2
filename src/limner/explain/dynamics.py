"""View "dynamics": how this family learns, in its own terms.

- GAN (Goodfellow et al. 2014; the D(real)/D(fake) readout of GAN Lab, Kahng et al. 2019):
  D's mean logit on real and on generated images and both losses over training, and D's score
  on a grid of real training images and generated ones.
  The generator reads a text condition as one pooled vector (no per-token attention) and each
  generated image is made for the caption of the real image above it, so that D scores real
  and generated images under the same conditions: a ``prompt`` has no part to play and is
  refused.
- VAE (Kingma & Welling 2014): the training set as a 2-D map (thumbnails placed by a PCA
  projection of their posterior means), a decoded walk across that map, and the
  reparameterisation z = mu + sigma eps shown as mean, spread and decoded draws; text runs add
  the per-token attention maps of the decoder's cross-attention for a prompt (view "attention").
- Diffusion (Karras et al. 2022): the loss at each noise level on a batch of training images,
  and one image denoised from every level, which shows which noise levels the model has
  learned; text runs add the per-token attention maps (view "attention").
- Token transformers (``token_dynamics.py``): MaskGIT's loss, accuracy and confidence against
  the mask ratio; the autoregressive family's loss along the raster order and its top-k
  probability mass; for both, the attention image tokens give each condition token (the text
  enters as prefix tokens of a joint self-attention), per block.

The family's hooks pick the function (``FamilyHooks.dynamics``); a family without one gets a
readable error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from limner.errors import UsageError
from limner.explain import render
from limner.explain.base import ExplainResult, ExplainRun, register_view
from limner.explain.hooks import hooks_for


@register_view("dynamics", "the family's own training dynamics (GAN: D on real and fake; VAE: the "
                           "latent map; diffusion: loss per noise level; MaskGIT: loss and accuracy "
                           "per mask ratio; autoregressive: loss along the raster order; text: "
                           "attention per prompt token)",
               params={
                   "step": "checkpoint (default: the newest)",
                   "count": "images per row of real and generated images; token models: the fixed "
                            "training images the losses are measured on (default 8)",
                   "points": "training images placed on the VAE's latent map (default 400)",
                   "seed": "seed for the images drawn (default 0)",
                   "prompt": "text runs with attention maps (diffusion, VAE, MaskGIT, "
                             "autoregressive; not GAN): the prompt of the maps (default: the "
                             "first training caption)",
                   "live": "the cheaper settings the live training callback uses (default false)",
               })
def dynamics_view(run: ExplainRun, step: int | str | None = None, count: int = 8, points: int = 400,
                  seed: int = 0, prompt: str | None = None, live: bool = False) -> ExplainResult:
    """Dispatches to the family's dynamics through its hooks."""
    from limner.models.registry import family_class

    family = family_class(run.family_name).from_config(run.config["family"]["config"])
    kind = getattr(family, "cond_kind", None)
    if prompt is not None and getattr(kind, "value", None) != "text":
        raise UsageError(f"this {run.family_name} run is not text-conditioned "
                         f"({getattr(kind, 'value', 'no condition')})", field="prompt")
    result = hooks_for(family).dynamics(run, step=step, count=count,
                                        points=min(points, 200) if live else points, seed=seed,
                                        prompt=prompt)
    if result is None:
        raise UsageError(f"view 'dynamics' has nothing for a {run.family_name!r} run yet")
    return result


def _sample_indices(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(k, n), replace=False))


def _real_batch(run: ExplainRun, k: int, seed: int):
    """k training images (fixed seed), unflipped, as a Batch on the run's device."""
    from limner.training.data_order import make_batch

    idx = _sample_indices(len(run.dataset.images), k, seed)
    return make_batch(run.dataset, idx, np.zeros(len(idx), dtype=bool)).to(run.device), idx


def _chart(metrics: list[dict[str, Any]], keys: list[str], title: str) -> Image.Image | None:
    from limner.explain.timeline import curves
    from limner.visualization.plots import line_chart

    series = curves(metrics)
    keys = [k for k in keys if k in series]
    if not keys:
        return None
    return line_chart({k: (series[k]["step"], series[k]["value"]) for k in keys}, title=title,
                      xlabel="step", size=(520, 260))


# ---------------------------------------------------------------------------------------------
# GAN
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def gan_dynamics(run: ExplainRun, step=None, count: int = 8, seed: int = 0, prompt: str | None = None,
                 **_: Any) -> ExplainResult:
    """D(real), D(fake) and the losses over training; D's score on real and generated images."""
    from limner.generation.request import BatchRequest

    if prompt is not None:
        raise UsageError("a GAN's dynamics has no use for a prompt: its generator reads the text as "
                         "one pooled vector (no per-token attention maps), and each generated image "
                         "is made for the caption of the real image it is scored beside",
                         field="prompt")
    loaded = run.load(step)  # EMA G (what users sample), D as trained
    family = loaded.family
    real, idx = _real_batch(run, count, seed)
    conditional = family.D.project is not None
    captions = real.captions if family.cond_kind.value == "text" else None
    labels = real.labels.tolist() if family.cond_kind.value == "class" and real.labels is not None else None
    fake = family.generate(BatchRequest(seeds=[seed + i for i in range(len(idx))], prompts=captions,
                                        labels=labels)).images.to(run.device)
    fake = fake.float() / 127.5 - 1.0
    inputs = None
    if conditional:
        inputs = family.encoder.prepare(captions=captions, labels=labels, batch_size=len(idx)).to(run.device)
    family.D.eval()
    d_real = family.D(real.images, inputs).float().cpu()
    d_fake = family.D(fake, inputs).float().cpu()
    metrics = run.metrics()
    charts = [c for c in (_chart(metrics, ["D_real", "D_fake"], "D's mean logit: real vs fake"),
                          _chart(metrics, ["loss_D", "loss_G"], "losses")) if c is not None]
    grid = _score_grid(real.images, fake, d_real, d_fake)
    result = ExplainResult("dynamics", data={
        "family": "gan", "step": loaded.step, "real_indices": idx.tolist(),
        "D_real_logits": d_real.tolist(), "D_fake_logits": d_fake.tolist(),
        "D_real_prob": torch.sigmoid(d_real).tolist(), "D_fake_prob": torch.sigmoid(d_fake).tolist(),
        "conditions": captions or labels,
    })
    result.images["dynamics"] = render.vstack([grid, render.hstack(charts)] if charts else [grid])
    return result


def _score_grid(real: Tensor, fake: Tensor, d_real: Tensor, d_fake: Tensor, size: int = 72) -> Image.Image:
    """Real and generated images, each with sigmoid(D) under it and a border: green where D
    says real (> 0.5), red where it says fake."""
    def cells(images: Tensor, logits: Tensor) -> list[Image.Image]:
        out = []
        for im, logit in zip(images, logits.tolist()):
            p = 1 / (1 + math.exp(-logit))
            c = render.cell(render.image_rgb(im), size)
            framed = Image.new("RGB", (c.width + 6, c.height + 6), (46, 160, 67) if p > 0.5 else (214, 39, 40))
            framed.paste(c, (3, 3))
            out.append(_note(framed, f"D {p:.2f}"))
        return out

    return render.grid([cells(real, d_real), cells(fake, d_fake)], row_labels=["real", "generated"],
                       title="D's probability that each image is real (sigmoid of its logit)")


def _note(image: Image.Image, text: str) -> Image.Image:
    f = render.font(11)
    canvas = Image.new("RGB", (image.width, image.height + 15), render.BACKGROUND)
    canvas.paste(image, (0, 0))
    ImageDraw.Draw(canvas).text((image.width // 2, image.height + 1), text, fill=render.INK,
                                font=f, anchor="mt")
    return canvas


# ---------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def vae_dynamics(run: ExplainRun, step=None, count: int = 8, points: int = 400, seed: int = 0,
                 prompt: str | None = None, **_: Any) -> ExplainResult:
    """The latent map (PCA of posterior means), a walk across it, and the reparameterisation;
    text runs add the decoder's attention maps for ``prompt``."""
    loaded = run.load(step)
    family = loaded.family
    batch, idx = _real_batch(run, points, seed)
    labels = batch.labels
    prompts = batch.captions if family.cond_kind.value == "text" else None
    lab = labels.tolist() if family.cond_kind.value == "class" and labels is not None else None
    means = torch.cat([family.encode(batch.images[a:a + 64], prompts=prompts[a:a + 64] if prompts else None,
                                     labels=lab[a:a + 64] if lab else None)
                       for a in range(0, len(idx), 64)]).float().cpu()
    flat = means.flatten(1)
    coords, explained = pca_2d(flat)
    walk = _walk(family, means, coords, count, prompts, lab)
    images = [_latent_map(batch.images.cpu(), coords, labels, getattr(run.dataset, "class_names", None))]
    images.append(render.grid([[render.cell(render.image_rgb(x), 64) for x in walk]],
                              title="a walk across the map: decoded latents from its leftmost "
                                    "to its rightmost image"))
    if family.config.variant == "kl":
        images.append(_reparameterisation(family, batch.images[:1], count, seed,
                                          prompts[:1] if prompts else None, lab[:1] if lab else None))
    charts = [c for c in (_chart(run.metrics(), ["recon", "kl"], "reconstruction and KL"),) if c is not None]
    result = ExplainResult("dynamics", data={
        "family": "vae", "step": loaded.step, "indices": idx.tolist(), "coords": coords.tolist(),
        "labels": labels.tolist() if labels is not None else None,
        "explained_variance": explained,
    })
    result.images["dynamics"] = render.hstack([images[0], render.vstack(images[1:] + charts)])
    _add_attention(run, family, result, step=loaded.step, seed=seed, prompt=prompt)
    return result


def pca_2d(x: Tensor) -> tuple[Tensor, list[float]]:
    """Rows of x [N, D] projected on their first two principal axes (SVD of the centred data;
    Pearson 1901), and the share of variance each axis explains."""
    centred = x.double() - x.double().mean(0, keepdim=True)
    U, S, Vh = torch.linalg.svd(centred, full_matrices=False)
    coords = centred @ Vh[:2].T
    var = S.square()
    share = (var[:2] / var.sum()).tolist() if var.sum() > 0 else [0.0, 0.0]
    if coords.shape[1] < 2:
        coords = torch.cat([coords, torch.zeros(len(coords), 2 - coords.shape[1], dtype=coords.dtype)], 1)
    return coords.float(), share


def _walk(family: Any, means: Tensor, coords: Tensor, count: int, prompts, labels) -> Tensor:
    a, b = int(coords[:, 0].argmin()), int(coords[:, 0].argmax())
    t = torch.linspace(0, 1, max(count, 2)).view(-1, 1, 1, 1)
    z = means[a : a + 1] * (1 - t) + means[b : b + 1] * t
    p = [prompts[a]] * len(z) if prompts else None
    lab = [labels[a]] * len(z) if labels else None
    return family.decode(z, prompts=p, labels=lab).clamp(-1, 1).cpu()


def _latent_map(images: Tensor, coords: Tensor, labels: Tensor | None, class_names: list[str] | None = None,
                size: int = 560, thumb: int = 28, cells: int = 18) -> Image.Image:
    """Every point as a dot (coloured by class), and one thumbnail per occupied cell of a
    ``cells`` x ``cells`` grid (the image nearest the cell's centre)."""
    from limner.visualization.plots import PALETTE

    pad = thumb
    lo, hi = coords.min(0).values, coords.max(0).values
    span = (hi - lo).clamp(min=1e-9)
    xy = ((coords - lo) / span * (size - 2 * pad) + pad).numpy()
    colours = PALETTE + [(127, 127, 127), (188, 189, 34), (23, 190, 207), (227, 119, 194)]
    legend = sorted({int(v) for v in labels.tolist()}) if labels is not None and class_names else []
    rows = (len(legend) + 4) // 5
    canvas = Image.new("RGB", (size, size + 24 + 16 * rows), render.BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((6, size + 4), "the training set placed by the first two principal axes of its "
                             "latent means (dots: every image, by class)", fill=render.INK, font=render.font(12))
    for k, c in enumerate(legend):
        x, y = 8 + (k % 5) * (size // 5), size + 24 + 16 * (k // 5)
        draw.ellipse([x, y + 4, x + 8, y + 12], fill=colours[c % len(colours)])
        draw.text((x + 12, y), str(class_names[c]) if c < len(class_names) else str(c),
                  fill=render.INK, font=render.font(11))
    for i, (x, y) in enumerate(xy):
        c = colours[int(labels[i]) % len(colours)] if labels is not None else (120, 120, 120)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=c)
    step = (size - 2 * pad) / cells
    chosen: dict[tuple[int, int], tuple[float, int]] = {}
    for i, (x, y) in enumerate(xy):
        key = (min(cells - 1, int((x - pad) / step)), min(cells - 1, int((y - pad) / step)))
        cx, cy = pad + (key[0] + 0.5) * step, pad + (key[1] + 0.5) * step
        d = (x - cx) ** 2 + (y - cy) ** 2
        if key not in chosen or d < chosen[key][0]:
            chosen[key] = (d, i)
    for _, i in chosen.values():
        im = render.cell(render.image_rgb(images[i]), thumb)
        x, y = xy[i]
        canvas.paste(im, (int(x - thumb / 2), int(y - thumb / 2)))
    return canvas


def _reparameterisation(family: Any, image: Tensor, count: int, seed: int, prompts, labels) -> Image.Image:
    """mu and sigma of q(z | x) for one image (first latent channels), its decoded mean and
    decoded draws z = mu + sigma eps."""
    from limner.models.vae.family import reparameterize

    model = family.model
    model.eval()
    vector, context = model.condition(
        family._inputs(1, prompts, labels).to(family.device) if (prompts or labels) else None, 1)
    h = model.encoder(image.to(family.device), vector, context)
    mu, logvar = h.chunk(2, dim=1)
    sigma = (0.5 * logvar).exp()
    gen = torch.Generator().manual_seed(seed)
    draws = torch.cat([reparameterize(mu.cpu(), logvar.cpu(), gen) for _ in range(max(count - 2, 1))])
    B = len(draws) + 1  # decode(mu) and the draws share the one image's condition
    if context is not None:
        context = type(context)(*(None if t is None else t.expand(B, *t.shape[1:]) for t in context))
    decoded = model.decoder(torch.cat([mu.cpu(), draws]).to(family.device),
                            None if vector is None else vector.expand(B, -1),
                            context).clamp(-1, 1).cpu()
    size = 64
    row = [render.caption(render.cell(render.image_rgb(image[0].cpu()), size), "x"),
           render.caption(render.cell(render.normalised_rgb(mu[0, :1].cpu()), size), "mean mu"),
           render.caption(render.cell(render.heat(sigma[0, 0].cpu()), size), f"spread {float(sigma.mean()):.2f}"),
           render.caption(render.cell(render.image_rgb(decoded[0]), size), "decode(mu)")]
    row += [render.caption(render.cell(render.image_rgb(d), size), f"draw {k + 1}")
            for k, d in enumerate(decoded[1:])]
    return render.grid([row], title="reparameterisation: z = mu + sigma * eps, decoded")


# ---------------------------------------------------------------------------------------------
# Diffusion
# ---------------------------------------------------------------------------------------------

SIGMAS = (0.01, 0.03, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 80.0)


@torch.no_grad()
def diffusion_dynamics(run: ExplainRun, step=None, count: int = 8, seed: int = 0, prompt: str | None = None,
                       **_: Any) -> ExplainResult:
    """EDM loss per noise level on training images, and one image denoised from each level."""
    loaded = run.load(step)
    family = loaded.family
    hooks = hooks_for(family)
    batch, idx = _real_batch(run, max(count, 16), seed)
    model = family.model if not hasattr(family, "diffusion") else family.diffusion.model
    cfg = family.config if not hasattr(family, "diffusion") else family.diffusion.config
    x = hooks.to_model_space(family, batch.images)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen).to(x.device)
    cond = _batch_condition(family, batch, model)
    sd = cfg.sigma_data
    losses, rows_noisy, rows_pred = [], [], []
    for s in SIGMAS:
        sigma = torch.full((len(x),), s, device=x.device)
        D = model(x + s * noise, sigma, cond).float()
        weight = (s**2 + sd**2) / (s * sd) ** 2
        losses.append(float(weight * ((D - x) ** 2).mean()))
        rows_noisy.append(hooks.to_pixels(family, (x + s * noise)[:1]))
        rows_pred.append(hooks.to_pixels(family, D[:1]))
    from limner.visualization.plots import line_chart

    chart = line_chart({"weighted loss": (list(SIGMAS), losses)}, logx=True, xticks=list(SIGMAS),
                       title=f"EDM loss by noise level (training draws ln sigma ~ N({cfg.P_mean}, {cfg.P_std}^2))",
                       xlabel="sigma", size=(620, 300))
    size = 64
    noisy = [render.caption(render.cell(render.image_rgb(r[0].clamp(-1, 1)), size), f"{s:g}") for s, r in zip(SIGMAS, rows_noisy)]
    preds = [render.cell(render.image_rgb(r[0].clamp(-1, 1)), size) for r in rows_pred]
    grid = render.grid([noisy, preds], row_labels=["x + sigma n", "D(x + sigma n)"],
                       title="one training image at every noise level (sigma above) and the model's clean guess")
    result = ExplainResult("dynamics", data={"family": run.family_name, "step": loaded.step,
                                             "sigmas": list(SIGMAS), "loss": losses,
                                             "indices": idx.tolist()})
    result.images["dynamics"] = render.vstack([grid, chart])
    _add_attention(run, family, result, step=loaded.step, seed=seed, prompt=prompt)
    return result


def _add_attention(run: ExplainRun, family: Any, result: ExplainResult, **params: Any) -> None:
    """Text runs: the per-token attention maps (view "attention") join the dynamics."""
    from limner.explain.attention import attention_view, cross_attention_blocks

    if cross_attention_blocks(family.modules()):
        attention = attention_view(run, **params)
        result.images["attention"] = attention.images["attention"]
        result.data["attention"] = attention.data


def _batch_condition(family: Any, batch, model) -> Any:
    """The batch's own captions or labels, encoded (the null condition for unconditional runs)."""
    from limner.conditioning import CondKind
    from limner.conditioning.base import Conditioning

    encoder = model.encoder
    if encoder.kind == CondKind.none:
        return Conditioning.empty(len(batch))
    inputs = encoder.prepare(captions=batch.captions, labels=batch.labels, batch_size=len(batch))
    return encoder(inputs.to(batch.images.device))
