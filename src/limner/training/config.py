"""The training configuration: one typed dataclass for every knob the family-agnostic trainer has.

EMA scheme: a fixed ``ema_decay`` per trainer step with the warm-up of Tarvainen & Valpola
(2017) as used by many diffusion codebases: the decay actually applied after ``n`` updates is
``min(ema_decay, (1 + n) / (10 + n))``, so early EMA weights follow the model instead of
staying stuck at the initialisation.

The LR schedule is a linear warm-up to ``lr`` over ``warmup_steps`` optimizer updates, then
constant (``lr_decay="none"``, so a run can be extended on resume), or decayed to
``lr * min_lr_ratio`` at ``steps`` along a half cosine (Loshchilov & Hutter 2017, "SGDR") or a
straight line. A decayed run that is extended on resume continues from the LR its new ``steps``
gives, not from where the old schedule ended.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from limner.errors import UsageError

Precision = Literal["fp32", "bf16"]
NonFinitePolicy = Literal["stop", "skip"]
LRDecay = Literal["none", "cosine", "linear"]


@dataclass
class TrainConfig:
    """Training-loop settings (the ``train`` section of a run config).

    Args:
        steps: total optimisation steps of the run (may grow on resume).
        batch_size: global batch size (images per step over all ranks and micro-batches).
        lr: peak AdamW learning rate, reached after ``warmup_steps``.
        betas: AdamW betas.
        weight_decay: AdamW decoupled weight decay.
        warmup_steps: linear LR warm-up length in optimizer updates (0 = none).
        lr_decay: after warm-up, "none" (constant), "cosine" or "linear" decay to
            ``lr * min_lr_ratio`` at ``steps``.
        min_lr_ratio: the decayed schedules' final LR as a fraction of ``lr``.
        grad_clip: max global grad norm per optimizer; None = no clipping (norm still logged).
        grad_accum: micro-batches per step (gradient accumulation).
        ema_decay: EMA decay per step (with warm-up, see module docstring); None = no EMA.
        precision: "bf16" runs the family's forward passes under bf16 autocast.
        seed: seed of the data order, the step generator and the global RNGs.
        device: "cpu", "cuda" or "cuda:N" (under torchrun, CUDA uses LOCAL_RANK).
        hflip: random horizontal flips (off by default: emoji and text are not flip-invariant).
        log_every: steps between metrics lines (JSONL/TensorBoard), averaged over the interval.
        sample_every: steps between sample grids, also drawn at the end (0 = never).
        sample_count: images per sample grid.
        save_every: steps between checkpoints (0 = only the final one, always written).
        keep_last: checkpoints kept (older ones are deleted after a new one is committed).
        nonfinite: on NaN/Inf loss or grad norm: "stop" the run or "skip" the optimizer step.
        max_consecutive_skips: with "skip", abort after this many non-finite steps in a row.
        tensorboard: also write TensorBoard event files.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_decay: LRDecay = "none"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    ema_decay: float | None = 0.999
    precision: Precision = "fp32"
    seed: int = 0
    device: str = "cpu"
    hflip: bool = False
    log_every: int = 10
    sample_every: int = 500
    sample_count: int = 16
    save_every: int = 500
    keep_last: int = 3
    nonfinite: NonFinitePolicy = "stop"
    max_consecutive_skips: int = 5
    tensorboard: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a dict, refusing unknown keys (typos must not be ignored silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown train setting(s): {', '.join(unknown)}")
        values = dict(data)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    def validate(self, world_size: int = 1) -> "TrainConfig":
        """Raise UsageError naming the first nonsensical field; returns self."""
        _positive_int(self, "steps", "batch_size", "grad_accum", "log_every")
        _positive_int(self, "keep_last", "sample_count", "max_consecutive_skips")
        _non_negative_int(self, "warmup_steps", "save_every", "sample_every")
        _finite(self, "lr", positive=True)
        _finite(self, "weight_decay", positive=False)
        if self.grad_clip is not None:
            _finite(self, "grad_clip", positive=True)
        _check_betas(self.betas)
        _check_ema(self.ema_decay)
        _choice(self, "precision", ("fp32", "bf16"))
        _choice(self, "nonfinite", ("stop", "skip"))
        _choice(self, "lr_decay", ("none", "cosine", "linear"))
        _finite(self, "min_lr_ratio", positive=False)
        if self.min_lr_ratio > 1:
            raise UsageError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        _non_negative_int(self, "seed")
        _check_device(self.device)
        _check_divisible(self.batch_size, self.grad_accum, world_size)
        return self


def _positive_int(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UsageError(f"train.{name} must be a positive integer, got {value!r}")


def _non_negative_int(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"train.{name} must be a non-negative integer, got {value!r}")


def _finite(cfg: TrainConfig, name: str, *, positive: bool) -> None:
    value = getattr(cfg, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0) or (not positive and value < 0):
        kind = "positive" if positive else "non-negative"
        raise UsageError(f"train.{name} must be a finite {kind} number, got {value!r}")


def _check_betas(betas: Any) -> None:
    ok = isinstance(betas, (tuple, list)) and len(betas) == 2
    ok = ok and all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas)
    if not ok:
        raise UsageError(f"train.betas must be two numbers in [0, 1), got {betas!r}")


def _check_ema(decay: float | None) -> None:
    if decay is None:
        return
    if not isinstance(decay, (int, float)) or not (0.0 <= decay < 1.0):
        raise UsageError(f"train.ema_decay must be in [0, 1) or null, got {decay!r}")


def _choice(cfg: TrainConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise UsageError(f"train.{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_device(device: str) -> None:
    base, _, index = str(device).partition(":")
    if base not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise UsageError(f"train.device must be cpu, cuda, cuda:N or mps; got {device!r}")


def _check_divisible(batch_size: int, grad_accum: int, world_size: int) -> None:
    if batch_size % (grad_accum * world_size) != 0:
        raise UsageError(
            f"train.batch_size ({batch_size}) must be divisible by grad_accum ({grad_accum}) "
            f"x world size ({world_size}) = {grad_accum * world_size}"
        )
