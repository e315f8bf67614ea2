"""Export a trained run as a bundled, sampling-only run folder: ``config.json``, one checkpoint
holding the EMA weights (float16 storage for large float tensors, loaded back into float32) and
a minimal ``state.pt``, its manifest, and a ``record.json`` (recipe, data hash, training time,
metrics). The result is an ordinary run folder: ``limner sample``, the studio and ``limner eval``
load it like any other."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from limner.fsutil import atomic_write

SMALL_TENSOR = 4096  # tensors up to this many elements (norms, biases, scales) stay float32


def export_run(run_dir: Path, dest: Path, *, record: dict[str, Any], name: str) -> Path:
    """Write the bundled folder ``dest`` from ``run_dir``'s newest valid checkpoint."""
    from limner.generation.pipeline import load_run
    from limner.training.checkpoint import write_checkpoint

    loaded = load_run(run_dir)
    family = loaded.family
    weights = {}
    for module_name, module in family.modules().items():
        suffix = "_ema" if module_name in family.ema_names() else ""
        weights[module_name + suffix] = {k: _storage(v) for k, v in module.state_dict().items()}
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    config = dict(loaded.run_config)
    config["bundled"] = {"name": name, "source_run_id": loaded.run_id, "step": loaded.step}
    atomic_write(dest / "config.json", lambda f: f.write(json.dumps(config, indent=1).encode()))
    write_checkpoint(dest, loaded.step, weights, {"step": loaded.step, "bundled": True})
    full = {**record, "name": name, "step": loaded.step, "model_hash": _hash(dest, loaded.step, family)}
    atomic_write(dest / "record.json", lambda f: f.write(json.dumps(full, indent=1).encode()))
    return dest


def _storage(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    if t.is_floating_point() and t.numel() > SMALL_TENSOR:
        return t.to(torch.float16)
    return t


def _hash(dest: Path, step: int, family: Any) -> str:
    from limner.training.checkpoint import checkpoint_root, model_hash, step_dir_name

    return model_hash(checkpoint_root(dest) / step_dir_name(step), sorted(family.modules()))

