"""Fitting a decaying LR schedule to a CPU budget (shared by the benchmark scripts).

A run stopped by a CPU budget has no step count known in advance, but a cosine or linear LR decay
needs its last step. :class:`ScheduleFit` re-estimates that step after every training step from
the average CPU cost per step so far (measured from the end of the first step, which pays for
start-up), so the decay reaches its floor when the budget runs out, whatever the machine's speed.
"""

from __future__ import annotations

from typing import Any


class ScheduleFit:
    """Call :meth:`update` at the end of every step with the CPU seconds spent and the budget."""

    def __init__(self) -> None:
        self.step0: int | None = None
        self.cpu0 = 0.0

    def update(self, trainer: Any, step: int, spent: float, budget: float) -> None:
        if trainer.config.lr_decay == "none":
            return
        if self.step0 is None:
            self.cpu0, self.step0 = spent, step
            return
        if step <= self.step0:
            return
        per_step = (spent - self.cpu0) / (step - self.step0)
        end = step + max(int((budget - spent) / per_step), 1)
        for schedule in trainer.schedulers.values():
            schedule.total = end
