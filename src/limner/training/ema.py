"""Exponential moving average of weights, kept in fp32 next to the live modules.

Polyak averaging with a warm-up: after ``n`` updates the decay applied is
``min(decay, (1 + n) / (10 + n))`` (Tarvainen & Valpola, 2017, https://arxiv.org/abs/1703.01780),
so early EMA weights are not stuck at the initialisation. Parameters are averaged, buffers
(e.g. BatchNorm statistics) are copied, as in EDM's training loop. The EMA copy is keyed like
the module's ``state_dict`` so it saves as ``<name>_ema.safetensors`` and loads into the same
architecture for sampling.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn


class EMA:
    """EMA copies of the named modules (``family.ema_names()``)."""

    def __init__(self, modules: Mapping[str, nn.Module], names: list[str], decay: float,
                 *, warmup: bool = True):
        self.modules = {name: modules[name] for name in names}
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0
        self.shadow: dict[str, dict[str, Tensor]] = {
            name: _fp32_copy(module) for name, module in self.modules.items()
        }

    def current_decay(self) -> float:
        """The decay the next update applies (warm-up limited)."""
        if not self.warmup:
            return self.decay
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        """Move every EMA copy towards the live weights; call once per trainer step."""
        weight = 1.0 - self.current_decay()
        for name, module in self.modules.items():
            shadow, targets, buffers = self.shadow[name], [], []
            param_ids = {id(p) for p in module.parameters()}
            for key, value in module.state_dict(keep_vars=True).items():
                (targets if id(value) in param_ids else buffers).append((key, value))
            if targets:
                torch._foreach_lerp_([shadow[k] for k, _ in targets],
                                     [v.detach().float() for _, v in targets], weight)
            for key, value in buffers:
                shadow[key].copy_(value)
        self.updates += 1

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Load EMA weights into the live modules; restore the training weights bitwise after."""
        backups = {name: {k: v.clone() for k, v in m.state_dict().items()}
                   for name, m in self.modules.items()}
        try:
            _copy_into(self.modules, self.shadow)
            yield
        finally:
            _copy_into(self.modules, backups)

    def state_dict(self) -> dict[str, Any]:
        """Counters only; the EMA tensors are saved as safetensors next to the weights."""
        return {"updates": self.updates, "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the update counter (and decay settings)."""
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])

    def load_shadow(self, name: str, tensors: Mapping[str, Tensor]) -> None:
        """Replace the EMA copy of ``name`` (keys must match its state_dict exactly)."""
        shadow = self.shadow[name]
        if set(tensors) != set(shadow):
            raise KeyError(f"EMA weights for {name!r} do not match the module's keys")
        with torch.no_grad():
            for key, value in tensors.items():
                shadow[key].copy_(value)


def _fp32_copy(module: nn.Module) -> dict[str, Tensor]:
    """Detached copies of a module's state; floating tensors promoted to fp32."""
    out = {}
    for key, value in module.state_dict().items():
        copy = value.detach().clone()
        out[key] = copy.float() if copy.is_floating_point() else copy
    return out


@torch.no_grad()
def _copy_into(modules: Mapping[str, nn.Module], states: Mapping[str, Mapping[str, Tensor]]
               ) -> None:
    """Copy tensors in place into each module's state (dtype-cast as needed)."""
    for name, module in modules.items():
        source = states[name]
        for key, value in module.state_dict().items():
            value.copy_(source[key])
