"""Optimizers and LR schedules built from a family's ``OptimizerSpec``s.

AdamW (Loshchilov & Hutter, 2019, https://arxiv.org/abs/1711.05101) for every named optimizer,
fused on CUDA. The schedule is a linear warm-up then constant, counted in optimizer updates; it
keeps its own plain-int state so a checkpoint loads with ``weights_only=True``.
"""

from __future__ import annotations

from typing import Any

import torch

from limner.models.base import OptimizerSpec
from limner.training.config import TrainConfig


def build_optimizer(spec: OptimizerSpec, config: TrainConfig, device: torch.device
                    ) -> torch.optim.AdamW:
    """AdamW for one spec; unset lr/betas/weight_decay come from the train config."""
    params = list(spec.params)
    if not params:
        raise ValueError("an OptimizerSpec has no parameters")
    fused = True if device.type == "cuda" else None
    return torch.optim.AdamW(
        params,
        lr=spec.lr if spec.lr is not None else config.lr,
        betas=tuple(spec.betas if spec.betas is not None else config.betas),
        weight_decay=spec.weight_decay if spec.weight_decay is not None else config.weight_decay,
        fused=fused,
    )


class WarmupSchedule:
    """Linear LR warm-up over ``warmup`` updates, then constant at each group's base LR.

    Update ``u`` (0-based) runs at ``base_lr * min(1, (u + 1) / warmup)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int):
        self.optimizer = optimizer
        self.warmup = warmup
        self.updates = 0
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self._apply()

    def factor(self) -> float:
        """The LR multiplier for the next update."""
        if self.warmup <= 0:
            return 1.0
        return min(1.0, (self.updates + 1) / self.warmup)

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.factor()

    def step(self) -> None:
        """Count one optimizer update and set the LR of the next one."""
        self.updates += 1
        self._apply()

    def current_lr(self) -> float:
        """LR of the first param group for the next update."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Plain-number state for checkpoints."""
        return {"updates": self.updates, "warmup": self.warmup, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the update count and base LRs, then re-apply the LR."""
        self.updates = int(state["updates"])
        self.warmup = int(state["warmup"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self._apply()


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """All parameters an optimizer updates, in group order."""
    return [p for group in optimizer.param_groups for p in group["params"]]
