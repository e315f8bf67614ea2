"""The trainer's implementation of ``limner.models.base.StepContext``.

It hides gradient accumulation, DDP gradient synchronisation, bf16 autocast, non-finite loss
handling, clipping and the LR schedule behind five calls, so a family's ``train_step`` reads
like its algorithm (and a GAN can own two optimizers inside one step).
"""

from __future__ import annotations

import contextlib
import math
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from limner.data.batch import Batch
from limner.errors import NonFiniteLossError
from limner.training.distributed import all_ranks_true, set_grad_sync
from limner.training.optim import optimizer_params

if TYPE_CHECKING:
    from limner.training.trainer import Trainer


class TrainStepContext:
    """Per-step services for ``Family.train_step`` (one instance, reset every step).

    Attributes:
        step: steps completed before the current one (0 during the first step).
    """

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.step = 0
        self.metrics: dict[str, float] = {}
        self.skipped: set[str] = set()
        self._micro_total = 1
        self._backwards: dict[str, int] = {}
        self._module_of_opt = _modules_per_optimizer(trainer)

    # -- lifecycle (called by the trainer) ----------------------------------------------------

    def begin(self, step: int) -> None:
        """Reset per-step bookkeeping before ``train_step``."""
        self.step = step
        self.metrics = {}
        self.skipped = set()
        self._backwards = {}
        # Until micro_batches() says otherwise, one backward per step: gradients sync.
        self._micro_total = 1
        self._set_sync_all(True)

    # -- StepContext ---------------------------------------------------------------------------

    def net(self, name: str) -> nn.Module:
        """The (DDP-wrapped when distributed) module ``name`` for training forwards."""
        return self.trainer.nets[name]

    def micro_batches(self, batch: Batch) -> list[Batch]:
        """``batch`` split into ``grad_accum`` micro-batches, moved to the device."""
        parts = batch.split(self.trainer.config.grad_accum)
        self._micro_total = len(parts)
        self._set_sync_all(self._micro_total == 1)
        return [part.to(self.trainer.device) for part in parts]

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast when ``precision == "bf16"``, else a null context."""
        if self.trainer.config.precision == "bf16":
            return torch.autocast(self.trainer.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: Tensor, optimizer: str) -> None:
        """Backward of one micro-batch loss, scaled by 1/micro-batches; non-finite per policy."""
        if loss.ndim != 0:
            raise ValueError(f"family loss for optimizer {optimizer!r} must be a scalar, "
                             f"got shape {tuple(loss.shape)}")
        finite = all_ranks_true(bool(torch.isfinite(loss.detach())), self.trainer.dist)
        if not finite:
            self._nonfinite(optimizer, "non-finite loss", float(loss.detach()))
        (loss / self._micro_total).backward()
        done = self._backwards.get(optimizer, 0) + 1
        self._backwards[optimizer] = done
        # The forward of the last micro-batch must run with DDP sync on (see set_grad_sync).
        for module in self._module_of_opt.get(optimizer, []):
            set_grad_sync(module, done + 1 >= self._micro_total)

    def optimizer_step(self, optimizer: str) -> None:
        """Clip, step, zero grads and advance the LR schedule of ``optimizer``."""
        opt = self.trainer.optimizers[optimizer]
        params = [p for p in optimizer_params(opt) if p.grad is not None]
        total = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else None
        norm = float(total) if total is not None else 0.0
        self.metrics[self._key("grad_norm", optimizer)] = norm
        if optimizer not in self.skipped and not math.isfinite(norm):
            self._nonfinite(optimizer, "non-finite gradient norm", norm)
        if optimizer in self.skipped:
            opt.zero_grad(set_to_none=True)
        else:
            clip = self.trainer.config.grad_clip
            if clip is not None and total is not None:
                torch.nn.utils.clip_grads_with_norm_(params, clip, total)
            schedule = self.trainer.schedulers[optimizer]
            self.metrics[self._key("lr", optimizer)] = schedule.current_lr()
            opt.step()
            opt.zero_grad(set_to_none=True)
            self.trainer.schedulers[optimizer].step()
        self._backwards[optimizer] = 0
        for module in self._module_of_opt.get(optimizer, []):
            set_grad_sync(module, self._micro_total == 1)

    def generator(self) -> torch.Generator:
        """The per-rank step generator (seeded from (seed, rank), saved in checkpoints)."""
        return self.trainer.generator

    # -- helpers -------------------------------------------------------------------------------

    def _key(self, base: str, optimizer: str) -> str:
        return base if len(self.trainer.optimizers) == 1 else f"{base}/{optimizer}"

    def _nonfinite(self, optimizer: str, what: str, value: float) -> None:
        """Apply the non-finite policy: raise ("stop") or mark the update skipped ("skip")."""
        trainer = self.trainer
        if trainer.config.nonfinite == "stop":
            last = trainer.last_checkpoint
            kept = (f"; the last good checkpoint is {last}" if last
                    else "; no checkpoint was written yet")
            raise NonFiniteLossError(f"{what} at step {self.step + 1} "
                                     f"({value}, optimizer {optimizer!r}){kept}")
        self.skipped.add(optimizer)

    def _set_sync_all(self, enabled: bool) -> None:
        for module in self.trainer.nets.values():
            set_grad_sync(module, enabled)


def _modules_per_optimizer(trainer: "Trainer") -> dict[str, list[nn.Module]]:
    """For each optimizer, the wrapped modules owning any of its parameters."""
    owners: dict[str, list[nn.Module]] = {}
    for opt_name, opt in trainer.optimizers.items():
        ids = {id(p) for p in optimizer_params(opt)}
        owners[opt_name] = [trainer.nets[name] for name, module in trainer.family.modules().items()
                            if any(id(p) in ids for p in module.parameters())]
    return owners
