"""Loading safetensors weights into a module, strictly (shared by training, generation and
evaluation, so none of them imports another for it)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from limner.errors import CheckpointError
from limner.models.safe_load import load_safetensors

_MAX_LISTED = 5


def load_module_weights(module: nn.Module, path: str | Path) -> None:
    """Load a safetensors file into ``module`` strictly.

    Raises:
        CheckpointError: not safetensors, missing/unexpected keys or shape mismatches (the
            first few listed), or NaN/Inf values.
    """
    tensors = load_safetensors(path)
    expected = module.state_dict()
    problems = _key_problems(expected, tensors)
    if problems:
        more = f" (+{len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise CheckpointError(f"{path} does not fit this model: "
                              f"{'; '.join(problems[:_MAX_LISTED])}{more}")
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: weight {key} contains NaN/Inf")
    module.load_state_dict(tensors, strict=True)


def _key_problems(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> list[str]:
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [f"shape of {k}: file {tuple(found[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in expected.items() if k in found and found[k].shape != v.shape]
    return problems
