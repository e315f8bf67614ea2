"""View "dynamics" for the token families: how a transformer over VQ codes learns.

- MaskGIT (Chang et al. 2022): training masks a share cos(pi/2 r), r ~ U(0, 1), of an image's
  codes and predicts them, so one network must work at every mask ratio the sampler later walks
  through (all masked first, few masked last). On a fixed batch of training images the view masks
  each ratio in turn (nested random masks, fixed seed) and reports the training loss (with the
  run's label smoothing), the plain cross-entropy, the accuracy of the likeliest code and its
  confidence (softmax probability) on the masked positions, and the accuracy of the most
  confident quarter: the sampler keeps the most confident predictions at every step, so
  confidence must rank correctness for it to work. One image shows the mask, the prediction,
  the confidence and the wrong codes at four ratios.
- Autoregressive (Esser et al. 2021): with teacher forcing on that fixed batch, the loss at every
  position of the raster order (the first codes have only the condition to go on; later ones see
  their neighbours above and to the left), and how the probability mass is spread: the mass of
  the k likeliest codes against how often the true code is among them (calibration of top-k
  sampling, Fan et al. 2018) and how many codes hold half and 90 % of the mass (nucleus
  sampling's view, Holtzman et al. 2020).
- Both: the training loss from ``metrics.jsonl``, and the attention each image token gives the
  condition (``limner.explain.tokens``: the prompt enters as prefix tokens of one joint
  self-attention, a pooled token first, then one per prompt token; there is no cross-attention
  layer). Per block and averaged, each prefix token's map over the token grid for a generated
  image: for MaskGIT averaged over the sampler's steps, for the autoregressive family one
  teacher-forced pass over the generated codes (what the KV-cached sampler computed token by
  token). Class-conditioned and unconditional runs show their one prefix token (the class, or the
  learned null token). The view "attention" of a text-conditioned token run is these maps alone
  (:func:`attention_result`).

The per-position losses are the training loss's own terms: ``recorded_loss`` runs the family's
``loss`` and :func:`token_loss` averaged over its :func:`loss_positions` gives the same number
(``tests/explain/test_explain_token_views.py``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from limner.conditioning import CondKind
from limner.conditioning.base import Conditioning
from limner.explain import render
from limner.explain.base import ExplainResult, ExplainRun
from limner.explain.hooks import NetCall

RATIOS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)  # one forward pass each: a few keep the view fast
PICTURE_RATIOS = (0.25, 0.5, 0.75, 1.0)
TOP_KS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


# ---------------------------------------------------------------------------------------------
# The training loss, position by position
# ---------------------------------------------------------------------------------------------


def token_loss(family: Any, logits: Tensor, targets: Tensor) -> Tensor:
    """The training loss's term at every position [B, N]: cross-entropy of the true code with
    the run's label smoothing (its mean over :func:`loss_positions` is the family's loss)."""
    return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none",
                           label_smoothing=family.config.label_smoothing)


def loss_positions(family: Any, inputs: Tensor) -> Tensor:
    """[B, N] bool: where the family takes its loss (MaskGIT: the masked inputs; autoregressive:
    every position)."""
    if family.kind == "maskgit":
        return inputs == family.model.net.special
    return torch.ones_like(inputs, dtype=torch.bool)


def recorded_loss(family: Any, tokens: Tensor, inputs: Any, drop: Tensor | None,
                  generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """The family's own training loss on codes ``tokens`` [B, N], and what its network was fed
    and answered: (loss, inputs [B, N], logits [B, N, K])."""
    from limner.explain.step import RecordingNet

    calls: list[NetCall] = []
    loss = family.loss(RecordingNet("model", family.model, calls), tokens, inputs, drop, generator)
    (call,) = calls
    return loss, call.args[0], call.output


def _held_batch(run: ExplainRun, family: Any, count: int, seed: int):
    """``count`` training images (fixed seed), their codes and their own condition."""
    from limner.explain.dynamics import _batch_condition, _real_batch

    batch, idx = _real_batch(run, count, seed)
    tokens = family.encode_batch(batch)
    return batch, idx, tokens, _batch_condition(family, batch, family.model)


def _metrics_chart(run: ExplainRun) -> list[Image.Image]:
    from limner.explain.dynamics import _chart

    chart = _chart(run.metrics(), ["loss"], "training loss (metrics.jsonl)")
    return [chart] if chart is not None else []


def _masked_view(image: Tensor, masked: Tensor, grid: int) -> Tensor:
    """The image [C, H, W] with the patches of masked tokens [N] filled grey."""
    m = F.interpolate(masked.float().reshape(1, 1, grid, grid), size=image.shape[-2:], mode="nearest")[0]
    return image * (1 - m)


def _grid_heat(values: Tensor, grid: int, size: int, vmax: float | None = None) -> Image.Image:
    return render.cell(render.heat(values.float().reshape(grid, grid).cpu(), vmax), size)


# ---------------------------------------------------------------------------------------------
# MaskGIT
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def mask_ratio_sweep(family: Any, tokens: Tensor, cond: Conditioning, ratios=RATIOS, seed: int = 0
                     ) -> tuple[list[dict[str, float]], dict[float, dict[str, Tensor]]]:
    """The network at each mask ratio on codes [B, N]: the first ceil(ratio N) positions of one
    seeded random order per image are masked (so each ratio's mask holds the smaller ones').
    Returns one row of numbers per ratio and, per ratio, the first image's mask, predicted
    codes, confidence and correctness."""
    B, N = tokens.shape
    gen = torch.Generator().manual_seed(seed)
    rank = torch.rand(B, N, generator=gen).argsort(dim=1).argsort(dim=1).to(tokens.device)
    rows, first = [], {}
    for ratio in ratios:
        count = min(N, max(1, math.ceil(ratio * N)))
        masked = rank < count
        inputs = tokens.masked_fill(masked, family.model.net.special)
        logits = family.model(inputs, cond).float()
        loss = token_loss(family, logits, tokens)
        ce = F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")
        probs = logits.softmax(-1)
        confidence, predicted = probs.max(-1)
        correct = predicted == tokens
        c, ok = confidence[masked], correct[masked].float()
        quarter = c.topk(max(1, len(c) // 4)).indices
        rows.append({"ratio": ratio, "masked_tokens": count, "loss": float(loss[masked].mean()),
                     "cross_entropy": float(ce[masked].mean()), "accuracy": float(ok.mean()),
                     "confidence": float(c.mean()), "accuracy_confident_quarter": float(ok[quarter].mean()),
                     "p_true": float(probs.gather(-1, tokens[..., None])[..., 0][masked].mean())})
        first[ratio] = {"masked": masked[0].cpu(), "predicted": torch.where(masked, predicted, tokens)[0],
                        "confidence": (confidence * masked)[0].cpu(), "wrong": (masked & ~correct)[0].cpu()}
    return rows, first


@torch.no_grad()
def maskgit_dynamics(run: ExplainRun, step=None, count: int = 8, seed: int = 0, prompt: str | None = None,
                     **_: Any) -> ExplainResult:
    """Loss, accuracy and confidence against the mask ratio; the prompt's attention maps."""
    from limner.samplers.maskgit import cosine_mask_ratio
    from limner.visualization.plots import line_chart

    loaded = run.load(step)
    family = loaded.family
    family.model.eval()
    batch, idx, tokens, cond = _held_batch(run, family, count, seed)
    rows, first = mask_ratio_sweep(family, tokens, cond, RATIOS + tuple(r for r in PICTURE_RATIOS
                                                                       if r not in RATIOS), seed)
    rows.sort(key=lambda r: r["ratio"])
    curve = [r for r in rows if r["ratio"] in RATIOS]
    x = [r["ratio"] for r in curve]
    median = float(cosine_mask_ratio(0.5))
    loss_chart = line_chart({"loss as trained": (x, [r["loss"] for r in curve]),
                             "cross-entropy": (x, [r["cross_entropy"] for r in curve])},
                            title="loss on the masked codes, by mask ratio",
                            xlabel=f"share of codes masked (training: cos(pi/2 r), half above {median:.0%})",
                            size=(600, 280))
    acc_chart = line_chart({"accuracy": (x, [r["accuracy"] for r in curve]),
                            "confidence": (x, [r["confidence"] for r in curve]),
                            "acc. of most sure 25%": (x, [r["accuracy_confident_quarter"] for r in curve])},
                           title="likeliest code at the masked positions: how often right, how sure",
                           xlabel="share of codes masked", size=(600, 280))
    g, size = family.config.grid, 72
    image = batch.images[0].float().cpu()
    table = []
    for ratio in PICTURE_RATIOS:
        f = first[ratio]
        decoded = family.decode(f["predicted"][None]).clamp(-1, 1)[0].cpu()
        table.append([render.cell(render.image_rgb(_masked_view(image, f["masked"], g)), size),
                      render.cell(render.image_rgb(decoded), size),
                      _grid_heat(f["confidence"], g, size, 1.0),
                      _grid_heat(f["wrong"], g, size, 1.0)])
    pictures = render.grid(table, row_labels=[f"{r:.0%} masked" for r in PICTURE_RATIOS],
                           col_labels=["masked input", "prediction", "confidence", "wrong code"],
                           title=f"training image {int(idx[0])}: masked codes filled with the likeliest "
                                 "(confidence 0..1)")
    codes = render.grid([[render.cell(render.image_rgb(image), size),
                          render.cell(render.image_rgb(family.decode(tokens[:1]).clamp(-1, 1)[0].cpu()), size)]],
                        col_labels=["image", "its codes"])
    result = ExplainResult("dynamics", data={
        "family": "maskgit", "step": loaded.step, "indices": idx.tolist(), "mask_ratios": rows,
        "training_median_mask_ratio": median, "label_smoothing": family.config.label_smoothing,
    })
    result.images["dynamics"] = render.vstack([
        render.hstack([loss_chart, acc_chart]),
        render.hstack([render.vstack([codes, *_metrics_chart(run)]), pictures]),
    ])
    _add_prefix_attention(run, family, result, prompt, seed)
    return result


# ---------------------------------------------------------------------------------------------
# Autoregressive
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def raster_statistics(family: Any, tokens: Tensor, cond: Conditioning) -> dict[str, Any]:
    """Teacher-forced pass over codes [B, N]: the training loss at each position, and the
    spread of each prediction's probability mass."""
    from limner.explain.tokens import model_inputs

    logits = family.model(model_inputs(family, tokens), cond).float()
    loss = token_loss(family, logits, tokens)  # [B, N]
    probs = logits.softmax(-1)
    p_true = probs.gather(-1, tokens[..., None])
    rank = (probs > p_true).sum(-1)  # codes strictly likelier than the true one
    ordered = probs.sort(dim=-1, descending=True).values
    cum = ordered.cumsum(-1)
    K = probs.shape[-1]
    ks = [k for k in TOP_KS if k < K] + [K]
    return {
        "loss": loss, "logits": logits,
        "position_loss": loss.mean(0).tolist(),
        "cross_entropy": float(F.cross_entropy(logits.transpose(1, 2), tokens)),
        "top_k": [{"k": k, "mass": float(cum[..., k - 1].mean()), "true_in_top_k": float((rank < k).float().mean())}
                  for k in ks],
        "codes_for_half_mass": float(((cum - ordered) < 0.5).sum(-1).float().mean()),
        "codes_for_90pct_mass": float(((cum - ordered) < 0.9).sum(-1).float().mean()),
        "top1_probability": ordered[..., 0],
    }


@torch.no_grad()
def autoregressive_dynamics(run: ExplainRun, step=None, count: int = 8, seed: int = 0,
                            prompt: str | None = None, **_: Any) -> ExplainResult:
    """Loss along the raster order, top-k mass against top-k accuracy; the prompt's attention."""
    from limner.visualization.plots import line_chart

    loaded = run.load(step)
    family = loaded.family
    family.model.eval()
    batch, idx, tokens, cond = _held_batch(run, family, count, seed)
    stats = raster_statistics(family, tokens, cond)
    g = family.config.grid
    per_pos = stats["position_loss"]
    rows_mean = [float(np.mean(per_pos[r * g:(r + 1) * g])) for r in range(g)]
    positions = list(range(len(per_pos)))
    loss_chart = line_chart({"loss at the position": (positions, per_pos),
                             "mean of its row": (positions, [rows_mean[p // g] for p in positions])},
                            title="training loss along the raster order (teacher forcing, fixed training batch)",
                            xlabel="position (row by row)", size=(600, 280))
    ks = [t["k"] for t in stats["top_k"]]
    k_chart = line_chart({"mass of the k likeliest codes": (ks, [t["mass"] for t in stats["top_k"]]),
                          "true code among them": (ks, [t["true_in_top_k"] for t in stats["top_k"]])},
                         logx=True, xticks=ks,
                         xlabel=f"k (the run samples with top_k {family.config.top_k or 'off'}, "
                                f"top_p {family.config.top_p:g})",
                         title="top-k: probability mass vs how often the true code is inside",
                         size=(600, 280))
    size = 72
    image = batch.images[0].float().cpu()
    predicted = stats["logits"][:1].argmax(-1)
    picture = render.grid([[render.cell(render.image_rgb(image), size),
                            render.cell(render.image_rgb(family.decode(tokens[:1]).clamp(-1, 1)[0].cpu()), size),
                            render.cell(render.image_rgb(family.decode(predicted).clamp(-1, 1)[0].cpu()), size),
                            _grid_heat(stats["loss"][0], g, size),
                            _grid_heat(stats["top1_probability"][0], g, size, 1.0)]],
                          col_labels=["image", "its codes", "prediction", "loss", "top-1 prob"],
                          title=f"training image {int(idx[0])}: each code predicted from the true codes before it")
    result = ExplainResult("dynamics", data={
        "family": "autoregressive", "step": loaded.step, "indices": idx.tolist(), "grid": g,
        "position_loss": per_pos, "row_loss": rows_mean, "mean_loss": float(np.mean(per_pos)),
        "cross_entropy": stats["cross_entropy"], "top_k": stats["top_k"],
        "codes_for_half_mass": stats["codes_for_half_mass"],
        "codes_for_90pct_mass": stats["codes_for_90pct_mass"],
        "label_smoothing": family.config.label_smoothing,
    })
    result.images["dynamics"] = render.vstack([
        render.hstack([loss_chart, k_chart]),
        render.hstack([picture, *_metrics_chart(run)]),
    ])
    _add_prefix_attention(run, family, result, prompt, seed)
    return result


# ---------------------------------------------------------------------------------------------
# The condition prefix's attention maps
# ---------------------------------------------------------------------------------------------


def _request(family: Any, run: ExplainRun, prompt: str | None, seed: int):
    """The request of the generated image: the prompt (default: the first training caption),
    the first training image's class, or nothing."""
    from limner.generation.request import BatchRequest

    kind = family.cond_kind
    if kind == CondKind.text:
        if prompt is None:
            prompt = next((c for c in (run.dataset.captions or []) if c.strip()), "")
        return BatchRequest(seeds=[int(seed)], prompts=[prompt]), prompt
    if prompt is not None:
        from limner.errors import UsageError

        raise UsageError(f"this {run.family_name} run is conditioned on {kind.value}, not text",
                         field="prompt")
    if kind == CondKind.class_:
        labels = run.dataset.labels
        label = int(labels[0]) if labels is not None and len(labels) else 0
        return BatchRequest(seeds=[int(seed)], labels=[label]), None
    return BatchRequest(seeds=[int(seed)]), None


def _prefix_labels(family: Any, run: ExplainRun, request, cond: Conditioning) -> list[str]:
    """A name for every prefix position: the pooled condition, then the prompt's tokens."""
    kind = family.cond_kind
    if kind == CondKind.none:
        return ["null token"]
    if kind == CondKind.class_:
        label = request.labels[0]
        names = getattr(run.dataset, "class_names", None) or []
        return [f"class {names[label] if label < len(names) else label}"]
    labels = ["pooled"]  # the prefix's first token: cond_vec(the pooled text vector)
    if cond.tokens is not None:
        from limner.explain.attention import token_labels

        labels += token_labels(family.encoder, request.prompts[0], cond.tokens.shape[1])
    return labels


@torch.no_grad()
def prefix_attention(run: ExplainRun, family: Any, prompt: str | None = None, seed: int = 0) -> dict[str, Any]:
    """For one generated image: per block, the attention each image token gives each prefix token
    (heads averaged), as maps [P, g, g]; see the module docstring."""
    from limner.explain.tokens import capture_self_attention, model_inputs

    request, prompt = _request(family, run, prompt, seed)
    g = family.config.grid
    N = g * g
    blocks = [(f"block {i + 1}", b) for i, b in enumerate(family.model.net.blocks)]
    device = family.device
    cond = (Conditioning.empty(1) if family.cond_kind == CondKind.none else
            family.encoder(family.encoder.prepare_request(request, 1).to(device)))
    if family.kind == "maskgit":
        with capture_self_attention(blocks) as capture:
            tokens = family.sample_tokens(request)
        how = f"averaged over the sampler's {len(capture.of(blocks[0][0]))} steps"
    else:
        tokens = family.sample_tokens(request)
        family.model.eval()
        with capture_self_attention(blocks) as capture:
            family.model(model_inputs(family, tokens), cond)
        how = "one teacher-forced pass over the generated codes, the attention the cached sampler computed"
    labels = _prefix_labels(family, run, request, cond)
    real = [True] + (cond.mask[0].tolist() if cond.tokens is not None and cond.mask is not None
                     else [True] * (len(labels) - 1))
    per_block = []
    for name, _ in blocks:
        calls = capture.of(name)
        probs = torch.stack([p[0].mean(0) for p in calls]).mean(0)  # [L, Lk], row 0 = the conditional one
        P = probs.shape[0] - N
        to_prefix = probs[P:, :P]  # [N, P]: image queries -> prefix keys
        per_block.append({"name": name, "maps": to_prefix.T.reshape(P, g, g),
                          "prefix_share": float(to_prefix.sum(1).mean()),
                          "row_sums": [float(probs[P:].sum(1).min()), float(probs[P:].sum(1).max())]})
    keep = [i for i, r in enumerate(real[:len(labels)]) if r]
    mean_maps = torch.stack([b["maps"] for b in per_block]).mean(0)
    return {"prompt": prompt, "seed": int(seed), "labels": [labels[i] for i in keep], "keep": keep,
            "how": how, "grid": g, "image": family.decode(tokens).clamp(-1, 1)[0].cpu(),
            "blocks": per_block, "mean": mean_maps}


def prefix_attention_image(att: dict[str, Any], cell: int = 80) -> Image.Image:
    """Rows: blocks and their mean; columns: the generated image, then each prefix token's map
    over a faded copy of it (one colour scale)."""
    from limner.explain.features import _map_rgb

    image, keep = att["image"], att["keep"]
    rows_maps = [(f"{b['name']} (prefix {b['prefix_share']:.0%})", b["maps"][keep]) for b in att["blocks"]]
    rows_maps.append(("mean of blocks", att["mean"][keep]))
    top = max(float(m.max()) for _, m in rows_maps) or 1.0
    shown = render.cell(render.image_rgb(image), cell)
    rows = [[shown] + [render.cell(_map_rgb(m, image, top), cell) for m in maps] for _, maps in rows_maps]
    what = f'"{att["prompt"]}"' if att["prompt"] is not None else "the condition"
    return render.grid(rows, row_labels=[name for name, _ in rows_maps],
                       col_labels=["image"] + [render.shorten(s, render.font(12), cell) for s in att["labels"]],
                       title=f"where the image tokens read {what}: their joint self-attention to each "
                             f"prefix token; {att['how']}")


def attention_result(run: ExplainRun, family: Any, step: int, prompt: str | None, seed: int) -> ExplainResult:
    """The "attention" view of a text-conditioned token run: the prefix attention maps alone."""
    if family.cond_kind != CondKind.text:
        from limner.errors import UsageError

        raise UsageError(f"RUN: {run.run_dir} is a {run.family_name} run conditioned on "
                         f"{family.cond_kind.value}; this view needs a text-conditioned run")
    result = ExplainResult("attention", data={"step": step})
    _add_prefix_attention(run, family, result, prompt, seed)
    result.data.update(result.data.pop("attention"))
    return result


def _add_prefix_attention(run: ExplainRun, family: Any, result: ExplainResult, prompt: str | None,
                          seed: int) -> None:
    att = prefix_attention(run, family, prompt, seed)
    result.images["attention"] = prefix_attention_image(att)
    result.data["attention"] = {
        "kind": "joint self-attention to the condition prefix",
        "prompt": att["prompt"], "seed": att["seed"], "tokens": att["labels"], "how": att["how"],
        "blocks": [{"name": b["name"], "prefix_share": b["prefix_share"], "row_sums": b["row_sums"],
                    "maps": b["maps"][att["keep"]]} for b in att["blocks"]],
        "token_share": [float(att["mean"][i].mean()) for i in att["keep"]],
    }
