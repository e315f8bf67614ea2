"""The family-agnostic trainer: batches, the family's step, EMA, checkpoints, callbacks.

The trainer knows no model family (minGPT's ``Trainer``): a family supplies its step and its
sample function, and every other concern is a named method (``next_batch`` -> ``run_family_step``
-> ``update_ema`` -> ``finish_metrics`` -> callbacks -> ``handle_stop_request``), as
guided-diffusion's ``TrainLoop`` splits ``run_step`` / ``_update_ema`` / ``_anneal_lr`` /
``log_step`` / ``save``. Resume is exact: weights, optimizers, schedules, EMA and its counter,
every RNG and the data position are restored, so N steps straight and k + (N - k) steps across a
process restart give bitwise-identical weights on CPU.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

import torch
from torch import nn

from limner import __version__
from limner.data.batch import Batch
from limner.errors import CheckpointError, NonFiniteLossError, UsageError
from limner.models.base import Family
from limner.nn import conv_plan
from limner.nn.bf16 import warn_if_slow_bf16
from limner.training import distributed as D
from limner.training.callbacks import (
    Callback,
    CheckpointSaver,
    MetricsLogger,
    ProgressBar,
    SampleGridCallback,
    TensorBoardLogger,
    default_sample_requests,
)
from limner.training.checkpoint import (
    CONFIG_FILE,
    CHECKPOINT_FORMAT,
    checkpoint_dirs,
    checkpoint_step,
    find_latest_valid,
    load_checkpoint_state,
    load_module_weights,
    read_run_config,
    remove_stale_tmp,
    write_checkpoint,
    write_json_atomic,
)
from limner.training.config import TrainConfig
from limner.training.context import TrainStepContext
from limner.training.data_order import (
    DataOrder,
    TrainData,
    check_train_data,
    make_batch,
    rank_slice,
)
from limner.training.ema import EMA
from limner.training.optim import WarmupSchedule, build_optimizer
from limner.training.rng import capture_rng, preserved_rng, restore_rng, step_generator
from limner.training.safe_load import load_safetensors
from limner.training.signals import StopFlag, TrainingInterrupted, stop_signals

# Keys that may change when a run is resumed: they do not change the optimisation itself.
RESUMABLE_CHANGES = frozenset({
    "limner_version", "train.steps", "train.device", "train.log_every", "train.sample_every",
    "train.sample_count", "train.save_every", "train.keep_last", "train.tensorboard",
})
_STATE_KEYS = ("step", "world_size", "optimizers", "schedulers", "ema", "data_order", "rng",
               "family", "trainer")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
C = TypeVar("C", bound=Callback)


@dataclass
class TrainResult:
    """What ``Trainer.fit`` returns."""

    step: int
    metrics: dict[str, float]
    checkpoint: Path | None
    run_dir: Path


@dataclass
class _Meter:
    """Averages step metrics over a logging interval."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    images: int = 0
    seconds: float = 0.0

    def add(self, metrics: dict[str, float], images: int, seconds: float) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.images += images
        self.seconds += seconds

    def flush(self) -> dict[str, float]:
        out = {key: self.sums[key] / self.counts[key] for key in self.sums}
        out["img_per_s"] = self.images / self.seconds if self.seconds > 0 else 0.0
        self.sums, self.counts, self.images, self.seconds = {}, {}, 0, 0.0
        return out


class Trainer:
    """Trains any ``Family`` on in-memory image data, writing a run folder (see DESIGN.md).

    Args:
        family: the model family (its modules are moved to ``config.device``).
        data: images [N, H, W, C] uint8 with optional captions/labels.
        config: training settings.
        run_dir: the run folder (created when missing).
        run_config: the full resolved run config (family, data, train sections); written to
            ``config.json`` and, on resume, compared with the saved one.
        callbacks: extra callbacks; a built-in is skipped when one of its type is given.
        progress: show a progress bar (tty) or periodic progress lines (no tty).
        resume: continue from the newest valid checkpoint in ``run_dir`` (never from scratch).
        allow_config_change: dotted config keys that may differ on resume.
    """

    def __init__(self, family: Family, data: TrainData, config: TrainConfig, run_dir: str | Path,
                 *, run_config: dict[str, Any], callbacks: Sequence[Callback] = (),
                 progress: bool = True, resume: bool = False,
                 allow_config_change: Sequence[str] = ()):
        check_train_data(data)
        self.family, self.data, self.config = family, data, config
        self.run_dir = Path(run_dir)
        self.dist = D.env_dist_info()
        config.validate(self.dist.world_size)
        self.device = D.resolve_device(config.device, self.dist)
        self.dist = D.init_distributed(self.device)
        self._conv_plans: dict[str, conv_plan.Traced] = {}  # the convolution plans this process used (fit)
        if self.dist.rank == 0:
            warn_if_slow_bf16(config.precision, self.device)
        try:
            self._setup(run_config, callbacks, progress, resume, allow_config_change)
        except BaseException:
            D.shutdown(self.dist)
            raise

    def _setup(self, run_config: dict[str, Any], callbacks: Sequence[Callback], progress: bool,
               resume: bool, allow_config_change: Sequence[str]) -> None:
        """Everything after the process group: state, callbacks, run folder, DDP wrappers."""
        self.run_config = self._resolve_run_config(run_config)
        self.step = 0
        self.outcome = "pending"
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict[str, float] = {}
        self.images_seen = 0
        self.consecutive_skips = 0
        self.stop_flag = StopFlag()
        self._meter = _Meter()
        self._build_state()
        self.callbacks = self._build_callbacks(callbacks, progress)
        self._prepare_run_dir(resume, allow_config_change)
        self.nets = D.wrap_modules(self.modules, self.device, self.dist)
        self.ctx = TrainStepContext(self)

    @classmethod
    def resume(cls, family: Family, data: TrainData, config: TrainConfig, run_dir: str | Path,
               **kwargs: Any) -> "Trainer":
        """A trainer continuing the run in ``run_dir`` from its newest valid checkpoint."""
        return cls(family, data, config, run_dir, resume=True, **kwargs)

    # -- setup ---------------------------------------------------------------------------------

    def _resolve_run_config(self, run_config: dict[str, Any]) -> dict[str, Any]:
        """The config written to config.json: ``train`` from ``self.config``, version added."""
        resolved = {**run_config, "train": self.config.to_dict()}
        resolved.setdefault("limner_version", __version__)
        resolved.setdefault("family", {"name": self.family.name,
                                       "config": self.family.config_dict()})
        try:
            return json.loads(json.dumps(resolved, allow_nan=False))  # as config.json reads back
        except (TypeError, ValueError) as e:
            raise UsageError(f"run_config is not JSON-serialisable: {e}") from None

    def _build_state(self) -> None:
        """Modules on the device, optimizers, LR schedules, EMA, data order, step generator."""
        self.modules: dict[str, nn.Module] = dict(self.family.modules())
        for name in self.modules:
            if not _NAME.match(name) or name.endswith("_ema") or name == "state":
                raise UsageError(f"family module name {name!r} cannot be a checkpoint file name")
        for module in self.modules.values():
            module.to(self.device)
        specs = self.family.optimizers()
        self.optimizers = {name: build_optimizer(spec, self.config, self.device)
                           for name, spec in specs.items()}
        c = self.config
        self.schedulers = {n: WarmupSchedule(o, c.warmup_steps, c.lr_decay, c.steps, c.min_lr_ratio)
                           for n, o in self.optimizers.items()}
        ema_names = list(self.family.ema_names()) if self.config.ema_decay is not None else []
        self.ema = EMA(self.modules, ema_names, self.config.ema_decay) if ema_names else None
        self.data_order = DataOrder(len(self.data.images), self.config.seed, self.config.hflip)
        self.generator = step_generator(self.config.seed, self.dist.rank, self.device)

    def _build_callbacks(self, extra: Sequence[Callback], progress: bool) -> list[Callback]:
        """Built-ins (unless the caller passed one of the same type), then the caller's."""
        builtins: list[Callback] = [MetricsLogger()]
        if self.config.tensorboard:
            builtins.append(TensorBoardLogger())
        if progress:
            builtins.append(ProgressBar())
        builtins.append(CheckpointSaver(self.config.save_every))
        if self.config.sample_every > 0:
            requests, labels = default_sample_requests(self.data, self.config.sample_count,
                                                       self.config.seed)
            builtins.append(SampleGridCallback(self.config.sample_every, requests, labels))
        given = {type(cb) for cb in extra}
        return [cb for cb in builtins if type(cb) not in given] + list(extra)

    def _prepare_run_dir(self, resume: bool, allow: Sequence[str]) -> None:
        """Clean leftovers, check/resume or refuse to clobber, then write config.json."""
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_tmp(self.run_dir)
        D.barrier(self.dist)
        if resume:
            self._check_resume_config(allow)
            self.load_checkpoint(self._resume_checkpoint())
        elif checkpoint_dirs(self.run_dir):
            raise UsageError(f"{self.run_dir} already holds checkpoints; resume it or choose "
                             "a new run folder")
        D.barrier(self.dist)
        if self.is_main:
            write_json_atomic(self.run_dir / CONFIG_FILE, self.run_config)

    def _check_resume_config(self, allow: Sequence[str]) -> None:
        """Refuse to resume when the run config changed (except ``RESUMABLE_CHANGES``/allow)."""
        saved = _flatten(read_run_config(self.run_dir))
        new = _flatten(self.run_config)
        free = RESUMABLE_CHANGES | set(allow)
        changed = [k for k in sorted(set(saved) | set(new))
                   if k not in free and saved.get(k, "<absent>") != new.get(k, "<absent>")]
        if changed:
            diff = "; ".join(f"{k}: {saved.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
                             for k in changed)
            raise UsageError(f"run config of {self.run_dir} changed, refusing to resume: {diff} "
                             "(start a new run, or allow the change explicitly)")

    def _resume_checkpoint(self) -> Path:
        """Rank 0 finds the newest valid checkpoint (moving invalid newer ones aside)."""
        path = None
        if self.is_main:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                path = find_latest_valid(self.run_dir, quarantine_invalid=True)
        path = D.broadcast_object(str(path) if path else None, self.dist)
        if path is None:
            raise CheckpointError(f"cannot resume {self.run_dir}: no valid checkpoint in "
                                  f"{self.run_dir / 'checkpoints'}")
        return Path(path)

    # -- properties and helpers ----------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        """Rank 0 (the only rank that writes files)."""
        return self.dist.is_main

    def callback_of_type(self, kind: type[C]) -> C | None:
        """The first callback of ``kind``, if any."""
        return next((cb for cb in self.callbacks if isinstance(cb, kind)), None)

    def request_stop(self) -> None:
        """Ask training to save and stop after the current step (e.g. from another thread)."""
        self.stop_flag.request(0)

    def ema_weights(self) -> contextlib.AbstractContextManager:
        """Context with the EMA weights loaded into the family's modules (restored after)."""
        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def sampling_weights(self) -> Iterator[None]:
        """EMA weights in, modules in eval mode, every RNG untouched by what runs inside."""
        modes = {name: m.training for name, m in self.modules.items()}
        with preserved_rng(self.generator), self.ema_weights():
            try:
                for module in self.modules.values():
                    module.eval()
                yield
            finally:
                for name, module in self.modules.items():
                    module.train(modes[name])

    def _fire(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            if self.is_main or not cb.main_only:
                getattr(cb, hook)(self, *args)

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train to ``config.steps``; raises TrainingInterrupted after a requested stop."""
        with stop_signals(self.stop_flag):
            try:
                for module in self.modules.values():
                    module.train()
                with preserved_rng(self.generator):  # callbacks must not shift any RNG
                    self._fire("on_train_start")
                with conv_plan.trace() as self._conv_plans:  # saved with each checkpoint
                    while self.step < self.config.steps:
                        self.train_one_step()
                        self.handle_stop_request()
                self.outcome = "finished"
            except TrainingInterrupted:
                self.outcome = "interrupted"
                raise
            except BaseException:
                self.outcome = "failed"
                raise
            finally:
                self._end_callbacks()
                self._shutdown()
        return TrainResult(self.step, dict(self.last_metrics), self.last_checkpoint, self.run_dir)

    def _shutdown(self) -> None:
        """Leave the process group together (a rank exiting early can abort its peers)."""
        if not self.dist.owns_group:
            return
        if self.outcome in ("finished", "interrupted"):
            D.barrier(self.dist)
        # DDP reducers hold the group: release them before it shuts down.
        self.nets = dict(self.modules)
        self.ctx = TrainStepContext(self)
        gc.collect()
        D.shutdown(self.dist)

    def _end_callbacks(self) -> None:
        """``on_train_end`` for all; on failure a callback error must not hide the cause."""
        if self.outcome == "finished":
            self._fire("on_train_end")
            return
        for cb in self.callbacks:
            if self.is_main or not cb.main_only:
                try:
                    cb.on_train_end(self)
                except Exception as e:  # noqa: BLE001 - reported, the original error wins
                    warnings.warn(f"{type(cb).__name__}.on_train_end failed: {e}", RuntimeWarning)

    def train_one_step(self) -> None:
        """One trainer step: batch, family step, EMA, metrics, callbacks."""
        start = time.perf_counter()
        batch = self.next_batch()
        family_metrics = self.run_family_step(batch)
        self.update_ema()
        self.step += 1
        self.images_seen += self.config.batch_size
        metrics = self.finish_metrics(family_metrics, time.perf_counter() - start)
        self.last_metrics = metrics
        if self.step % self.config.log_every == 0 or self.step == self.config.steps:
            self.log_step(metrics)
        self._fire("on_step_end", self.step, metrics)

    def next_batch(self) -> Batch:
        """This rank's share of the next global batch, on the training device."""
        indices, flips = self.data_order.take(self.config.batch_size)
        indices, flips = rank_slice(indices, flips, self.dist.rank, self.dist.world_size)
        return make_batch(self.data, indices, flips).to(self.device)

    def run_family_step(self, batch: Batch) -> dict[str, float]:
        """``family.train_step`` with a fresh context; applies the skip policy's counter."""
        self.ctx.begin(self.step)
        raw = self.family.train_step(batch, self.ctx)
        metrics = {k: float(v) for k, v in raw.items()}
        if self.config.nonfinite == "skip":
            metrics["skipped"] = 1.0 if self.ctx.skipped else 0.0
        if self.ctx.skipped:
            self.consecutive_skips += 1
            if self.consecutive_skips >= self.config.max_consecutive_skips:
                raise NonFiniteLossError(
                    f"non-finite loss at step {self.step + 1}: {self.consecutive_skips} "
                    f"consecutive steps skipped; the last good checkpoint is "
                    f"{self.last_checkpoint}")
        else:
            self.consecutive_skips = 0
        return metrics

    def update_ema(self) -> None:
        """EMA update once per trainer step (not after a skipped update)."""
        if self.ema is not None and not self.ctx.skipped:
            self.ema.update()

    def finish_metrics(self, family_metrics: dict[str, float], seconds: float) -> dict[str, float]:
        """Family scalars + grad norms + LR, averaged over ranks; img/s, epoch, kimg added."""
        metrics = {**family_metrics, **self.ctx.metrics}
        for name, schedule in self.schedulers.items():
            metrics.setdefault("lr" if len(self.schedulers) == 1 else f"lr/{name}",
                               schedule.current_lr())
        if self.dist.enabled:
            keys = sorted(metrics)
            values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
            values = D.all_reduce_sum(values, self.dist) / self.dist.world_size
            metrics = dict(zip(keys, values.tolist()))
        self._meter.add(metrics, self.config.batch_size, seconds)
        order = self.data_order
        metrics["img_per_s"] = self.config.batch_size / seconds if seconds > 0 else 0.0
        metrics["epoch"] = order.epoch + order.position / order.size
        metrics["kimg"] = self.images_seen / 1000
        return metrics

    def log_step(self, metrics: dict[str, float]) -> None:
        """Fire ``on_log`` with interval averages (LR, epoch and kimg as of this step)."""
        logged = self._meter.flush()
        for key in ("epoch", "kimg"):
            logged[key] = metrics[key]
        for key in metrics:
            if key == "lr" or key.startswith("lr/"):
                logged[key] = metrics[key]
        logged["time"] = time.time()
        self._fire("on_log", self.step, logged)

    def handle_stop_request(self) -> None:
        """After a stop signal on any rank: save at this step and raise TrainingInterrupted."""
        local = self.stop_flag.requested
        if D.all_ranks_true(not local, self.dist) or self.step >= self.config.steps:
            return
        path = self.save_checkpoint()
        raise TrainingInterrupted(self.stop_flag.signum or None, path, self.step)

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The resumable state of this rank (plain tensors/containers)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "world_size": self.dist.world_size,
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "data_order": self.data_order.state_dict(),
            "family": self.family.extra_state(),
            "trainer": {"images_seen": self.images_seen,
                        "consecutive_skips": self.consecutive_skips},
        }

    def checkpoint_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """File stem -> tensors: each module's weights and each EMA copy."""
        weights = {name: module.state_dict() for name, module in self.modules.items()}
        if self.ema is not None:
            weights.update({f"{name}_ema": sd for name, sd in self.ema.shadow.items()})
        return weights

    def save_checkpoint(self) -> Path:
        """Write a checkpoint at the current step (collective under DDP; rank 0 writes)."""
        if self.last_checkpoint is not None and checkpoint_step(self.last_checkpoint) == self.step:
            return self.last_checkpoint
        rng = D.gather_objects(capture_rng(self.generator), self.dist)
        plans = D.gather_objects(conv_plan.plans_of(self._conv_plans), self.dist)
        path, error = None, None
        if self.is_main:
            try:
                state = {**self.state_dict(), "rng": rng, "conv_plans": plans}
                path = write_checkpoint(self.run_dir, self.step, self.checkpoint_weights(), state,
                                        keep_last=self.config.keep_last)
            except CheckpointError as e:
                error = e
        ok = D.all_ranks_true(error is None, self.dist)
        if error is not None:
            raise error
        if not ok:
            raise CheckpointError(f"rank 0 could not write the checkpoint at step {self.step}")
        self.last_checkpoint = Path(D.broadcast_object(str(path), self.dist))
        self._fire("on_save", self.last_checkpoint)
        return self.last_checkpoint

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything from a checkpoint directory (verified first)."""
        state = load_checkpoint_state(path)
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"checkpoint {path} is incomplete: state lacks "
                                  f"{', '.join(missing)}")
        if state["world_size"] != self.dist.world_size:
            raise UsageError(f"checkpoint {path} was written by {state['world_size']} process(es); "
                             f"this run has {self.dist.world_size} (exact resume needs the same)")
        self._load_weights(path)
        self._load_optimizers(path, state)
        self.data_order.load_state_dict(state["data_order"])
        self.family.load_extra_state(state["family"])
        self.images_seen = int(state["trainer"]["images_seen"])
        self.consecutive_skips = int(state["trainer"]["consecutive_skips"])
        self.step = int(state["step"])
        if self.step > self.config.steps:
            raise UsageError(f"train.steps ({self.config.steps}) is below the checkpoint's step "
                             f"({self.step}); raise it to continue")
        restore_rng(state["rng"][self.dist.rank], self.generator)
        plans = state.get("conv_plans")  # each rank's measured convolution plans (none before 0.1.0's plans)
        if isinstance(plans, list) and self.dist.rank < len(plans) and isinstance(plans[self.dist.rank], dict):
            conv_plan.pin(plans[self.dist.rank])
        self.last_checkpoint = path

    def _load_weights(self, path: Path) -> None:
        """Module weights and EMA copies (strict)."""
        for name, module in self.modules.items():
            load_module_weights(module, path / f"{name}.safetensors")
        if self.ema is not None:
            for name in self.ema.shadow:
                file = path / f"{name}_ema.safetensors"
                try:
                    self.ema.load_shadow(name, load_safetensors(file))
                except KeyError as e:
                    raise CheckpointError(f"{file}: {e}") from None

    def _load_optimizers(self, path: Path, state: dict[str, Any]) -> None:
        """Optimizers, LR schedules and the EMA counter (all must be present)."""
        for kind, own in (("optimizers", self.optimizers), ("schedulers", self.schedulers)):
            if set(state[kind]) != set(own):
                raise CheckpointError(f"checkpoint {path} has {kind} {sorted(state[kind])}, "
                                      f"the family uses {sorted(own)}")
            for name, obj in own.items():
                obj.load_state_dict(state[kind][name])
        if (state["ema"] is None) != (self.ema is None):
            raise CheckpointError(f"checkpoint {path} and this run disagree on EMA")
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists compared whole)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out
