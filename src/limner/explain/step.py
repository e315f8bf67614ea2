"""View "step": one real training step, opened up.

The run's own ``family.train_step`` runs once on a real batch from the checkpoint's weights,
optimizer state and LR schedule, through a step context that records instead of hiding: every
network call the step makes through ``ctx.net`` (so the family's hooks can show the input, the
noise or mask added, the prediction and the per-pixel loss), the gradient of every layer before
clipping, and the size of the update the optimizer then makes (forward pass -> loss ->
backpropagation -> update, Rumelhart, Hinton & Williams 1986). Nothing is written back: the run
folder is read only.

By default the batch and the step's random numbers are the ones the run would use next (the
checkpoint's data position and step generator), so this is the step the trainer would take.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from limner.data.batch import Batch
from limner.errors import UsageError
from limner.explain import render
from limner.explain.base import ExplainResult, ExplainRun, register_view
from limner.explain.hooks import NetCall, Panel, hooks_for
from limner.nn.bf16 import warn_if_slow_bf16

MAX_CHART_GROUPS = 36


# ---------------------------------------------------------------------------------------------
# Recording the step
# ---------------------------------------------------------------------------------------------


class RecordingNet:
    """Calls ``module`` and records the call; outputs that need a gradient keep it (so a hook
    can show the loss's gradient with respect to, e.g., a generated image)."""

    def __init__(self, name: str, module: nn.Module, calls: list[NetCall]):
        self.name, self.module, self.calls = name, module, calls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.module(*args, **kwargs)
        if isinstance(out, Tensor) and out.requires_grad:
            out.retain_grad()
        self.calls.append(NetCall(self.name, args, kwargs, out))
        return out

    def __getattr__(self, item: str) -> Any:
        return getattr(self.module, item)


@dataclass
class LayerStat:
    """One layer (a module owning parameters) in one optimizer update."""

    name: str
    optimizer: str
    params: int
    grad_norm: float
    update_norm: float
    weight_norm: float

    @property
    def relative_update(self) -> float:
        return self.update_norm / self.weight_norm if self.weight_norm > 0 else 0.0


class ExplainStepContext:
    """A ``StepContext`` that records the step (see the module docstring).

    Args:
        modules: the family's modules by name.
        optimizers / schedulers: built and loaded from the checkpoint.
        step: steps completed before this one.
        generator: the step generator.
        grad_clip, grad_accum, precision: the run's training settings.
    """

    def __init__(self, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                 schedulers: dict[str, Any], step: int, generator: torch.Generator,
                 grad_clip: float | None, grad_accum: int, precision: str, device: torch.device):
        self.modules, self.optimizers, self.schedulers = modules, optimizers, schedulers
        self.step, self._generator = step, generator
        self.grad_clip, self.grad_accum, self.precision, self.device = grad_clip, grad_accum, precision, device
        warn_if_slow_bf16(precision, device)
        self.calls: list[NetCall] = []
        self.layers: list[LayerStat] = []
        self.totals: dict[str, dict[str, float]] = {}
        self._micro_total = 1
        self._owner = layer_names(modules)

    def net(self, name: str) -> RecordingNet:
        return RecordingNet(name, self.modules[name], self.calls)

    def micro_batches(self, batch: Batch) -> list[Batch]:
        parts = batch.split(self.grad_accum)
        self._micro_total = len(parts)
        return [p.to(self.device) for p in parts]

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: Tensor, optimizer: str) -> None:
        if loss.ndim != 0:
            raise ValueError(f"family loss for optimizer {optimizer!r} must be a scalar")
        (loss / self._micro_total).backward()

    def optimizer_step(self, optimizer: str) -> None:
        """Per-layer gradient norms (before clipping), then the real update and its size."""
        opt = self.optimizers[optimizer]
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        grads = layer_grad_norms(params, self._owner)
        before = {id(p): p.detach().clone() for p in params}
        total = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else None
        if self.grad_clip is not None and total is not None:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, total)
        lr = float(opt.param_groups[0]["lr"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        updates: dict[str, list[float]] = OrderedDict()
        for p in params:
            name = self._owner[id(p)]
            entry = updates.setdefault(name, [0.0, 0.0, 0])
            entry[0] += float((p.detach() - before[id(p)]).double().square().sum())
            entry[1] += float(before[id(p)].double().square().sum())
            entry[2] += p.numel()
        for name, (du, ww, n) in updates.items():
            self.layers.append(LayerStat(name, optimizer, int(n), grads[name], math.sqrt(du), math.sqrt(ww)))
        self.totals[optimizer] = {"grad_norm": float(total) if total is not None else 0.0, "lr": lr,
                                  "update_norm": math.sqrt(sum(v[0] for v in updates.values()))}
        if optimizer in self.schedulers:
            self.schedulers[optimizer].step()

    def generator(self) -> torch.Generator:
        return self._generator


def layer_names(modules: dict[str, nn.Module]) -> dict[int, str]:
    """id(parameter) -> the dotted name of the module that owns it ("model.backbone.conv_in")."""
    owner: dict[int, str] = {}
    for top, module in modules.items():
        for sub_name, sub in module.named_modules():
            for _, p in sub.named_parameters(recurse=False):
                owner.setdefault(id(p), f"{top}.{sub_name}" if sub_name else top)
    return owner


def layer_grad_norms(params: list[nn.Parameter], owner: dict[int, str]) -> dict[str, float]:
    """Layer name -> sqrt(sum over its parameters of ||grad||^2), in parameter order."""
    sums: dict[str, float] = OrderedDict()
    for p in params:
        name = owner[id(p)]
        sums[name] = sums.get(name, 0.0) + float(p.grad.detach().double().square().sum())
    return {k: math.sqrt(v) for k, v in sums.items()}


# ---------------------------------------------------------------------------------------------
# Setting up the real step
# ---------------------------------------------------------------------------------------------


@dataclass
class OpenedStep:
    """Everything the step view recorded."""

    family: Any
    batch: Batch
    ctx: ExplainStepContext
    metrics: dict[str, float]
    step: int
    flips: list[bool]


def run_step(run: ExplainRun, step: int | None = None, indices: list[int] | None = None,
             seed: int | None = None) -> OpenedStep:
    """Load checkpoint ``step`` (raw weights, optimizer state, schedule), build the batch and
    generator, and run the family's ``train_step`` once through :class:`ExplainStepContext`."""
    from limner.training.checkpoint import load_checkpoint_state
    from limner.training.config import TrainConfig
    from limner.training.optim import WarmupSchedule, build_optimizer

    loaded = run.load(step, ema=False)
    family, device = loaded.family, run.device
    state = load_checkpoint_state(loaded.checkpoint)
    cfg = TrainConfig.from_dict({**run.config["train"], "device": str(device)})
    modules = dict(family.modules())
    for module in modules.values():
        module.to(device).train()
    optimizers = {n: build_optimizer(spec, cfg, device) for n, spec in family.optimizers().items()}
    schedulers = {n: WarmupSchedule(o, cfg.warmup_steps, cfg.lr_decay, cfg.steps, cfg.min_lr_ratio)
                  for n, o in optimizers.items()}
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
        schedulers[name].load_state_dict(state["schedulers"][name])
    family.load_extra_state(state["family"])
    batch, flips = _batch(run, cfg, state, indices)
    generator = _generator(state, seed, device)
    ctx = ExplainStepContext(modules, optimizers, schedulers, loaded.step, generator,
                             cfg.grad_clip, cfg.grad_accum, cfg.precision, device)
    metrics = family.train_step(batch.to(device), ctx)
    return OpenedStep(family, batch, ctx, {k: float(v) for k, v in metrics.items()}, loaded.step, flips)


def _batch(run: ExplainRun, cfg: Any, state: dict[str, Any], indices: list[int] | None
           ) -> tuple[Batch, list[bool]]:
    """The next batch of the saved data order, or the given dataset indices (unflipped)."""
    from limner.training.data_order import DataOrder, make_batch

    data = run.dataset
    if indices is not None:
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= len(data.images):
            raise UsageError(f"indices: dataset indices must be in 0..{len(data.images) - 1}")
        flips = np.zeros(len(idx), dtype=bool)
    else:
        order = DataOrder(len(data.images), cfg.seed, cfg.hflip)
        order.load_state_dict(state["data_order"])
        idx, flips = order.take(cfg.batch_size)
    return make_batch(data, idx, flips), flips.tolist()


def _generator(state: dict[str, Any], seed: int | None, device: torch.device) -> torch.Generator:
    """The checkpoint's step generator (rank 0), or a fresh one seeded with ``seed``."""
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(int(seed))
    else:
        gen.set_state(state["rng"][0]["step_generator"])
    return gen


# ---------------------------------------------------------------------------------------------
# The view
# ---------------------------------------------------------------------------------------------


@register_view("step", "one real training step: input, noise or mask, prediction, per-pixel "
                       "loss, then gradient and update size per layer",
               params={
                   "step": "checkpoint to start from (default: the newest)",
                   "count": "images of the batch to show (default 6)",
                   "indices": "dataset indices for the batch (default: the batch the run would take next)",
                   "seed": "seed for the step's noise (default: the run's own step generator)",
               })
def step_view(run: ExplainRun, step: int | None = None, count: int = 6,
              indices: list[int] | None = None, seed: int | None = None) -> ExplainResult:
    """The step view (see the module docstring)."""
    opened = run_step(run, step, indices, seed)
    hooks = hooks_for(opened.family)
    with torch.no_grad():
        panels = hooks.step_panels(opened.family, opened.batch.to(run.device), opened.ctx.calls)
    layers = opened.ctx.layers
    result = ExplainResult("step", data={
        "checkpoint_step": opened.step,
        "batch_indices": opened.batch.indices.tolist(),
        "flips": opened.flips,
        "metrics": opened.metrics,
        "optimizers": opened.ctx.totals,
        "layers": [{"name": s.name, "optimizer": s.optimizer, "params": s.params,
                    "grad_norm": s.grad_norm, "update_norm": s.update_norm,
                    "weight_norm": s.weight_norm, "relative_update": s.relative_update}
                   for s in layers],
        "panels": [{"name": p.name, "what": p.what, "notes": p.notes} for p in panels],
    })
    result.images["step"] = panels_image(panels, count, title=f"one training step from step {opened.step}")
    result.images["layers"] = layers_chart(layers)
    return result


def panel_cells(panel: Panel, count: int, size: int) -> list[Image.Image]:
    """The first ``count`` images of a panel as cells (maps share one colour scale)."""
    values = panel.values[:count].detach().float().cpu()
    top = float(values.max()) if values.numel() else 1.0
    cells = []
    for i, v in enumerate(values):
        if panel.kind == "image":
            arr = render.image_rgb(v)
        elif panel.kind == "heat":
            arr = render.heat(v[0], top)
        elif panel.kind == "signed":
            arr = render.diverging(v[0], float(values.abs().max()))
        else:
            arr = render.normalised_rgb(v)
        im = render.cell(arr, size)
        note = panel.notes[i] if panel.notes and i < len(panel.notes) else None
        cells.append(_with_note(im, note) if panel.notes else im)
    return cells


def _with_note(image: Image.Image, note: str | None) -> Image.Image:
    f = render.font(11)
    canvas = Image.new("RGB", (image.width, image.height + 15), render.BACKGROUND)
    canvas.paste(image, (0, 0))
    if note:
        ImageDraw.Draw(canvas).text((image.width // 2, image.height + 1), note, fill=render.MUTED,
                                    font=f, anchor="mt")
    return canvas


def panels_image(panels: list[Panel], count: int, title: str, size: int = 72) -> Image.Image:
    rows = [panel_cells(p, count, size) for p in panels]
    return render.grid(rows, row_labels=[p.name for p in panels], title=title)


def layers_chart(layers: list[LayerStat]) -> Image.Image:
    """Gradient norm and update size per layer group (log scale), grouped to fit one chart."""
    names = [s.name for s in layers]
    depth = max(1, max((n.count(".") + 1 for n in names), default=1))
    while depth > 1 and len({_prefix(n, depth) for n in names}) > MAX_CHART_GROUPS:
        depth -= 1
    groups: dict[str, list[float]] = OrderedDict()
    for s in layers:
        g = groups.setdefault(_prefix(s.name, depth), [0.0, 0.0, 0.0])
        g[0] += s.grad_norm**2
        g[1] += s.update_norm**2
        g[2] += s.weight_norm**2
    keys = list(groups)
    grad = [math.sqrt(groups[k][0]) for k in keys]
    upd = [math.sqrt(groups[k][1]) for k in keys]
    rel = [math.sqrt(groups[k][1]) / math.sqrt(groups[k][2]) if groups[k][2] > 0 else 0.0 for k in keys]
    return render.bar_chart(keys, {"gradient norm ||g||": grad, "update ||dW||": upd,
                                   "relative update ||dW|| / ||W||": rel},
                            title="backpropagation and the update, per layer (log scale)", width=720)


def _prefix(name: str, depth: int) -> str:
    return ".".join(name.split(".")[:depth])
