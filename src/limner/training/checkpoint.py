"""Run-folder checkpoints: atomic writes, retention and loading the resumable state (reading the
layout, manifests and the newest valid checkpoint is torch-free, in ``limner.runs.layout``).

Layout of one checkpoint (``RUN/checkpoints/step_000500/``)::

    <name>.safetensors       training weights of each family module (metadata: step, name)
    <name>_ema.safetensors   EMA weights of the modules that keep one
    state.pt                 resumable state, plain tensors/containers (weights_only loadable)
    manifest.json            format version, step, size and sha256 of every file above

Everything is written into ``checkpoints/.tmp-step_000500-<pid>/``, fsynced, renamed to its
final name in one ``os.replace``, and only then is ``checkpoints/latest`` rewritten (temp +
replace) and are old checkpoints deleted, so a crash at any byte leaves the previous checkpoint
intact (the save/commit split follows accelerate's ``save_state``; the keep-last policy,
diffusers' ``checkpoints_total_limit``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from limner.errors import CheckpointError
from limner.models.safe_load import load_state
from limner.models.weights import load_module_weights  # noqa: F401 - re-exported
# The torch-free half (layout, manifests, verification, run config) lives in limner.runs; its
# names stay importable from here.
from limner.runs.layout import (  # noqa: F401 - re-exported
    CHECKPOINT_FORMAT, CONFIG_FILE, LATEST_FILE, MANIFEST_FILE, STATE_FILE, CheckpointWarning,
    checkpoint_dirs, checkpoint_root, checkpoint_step, commit_dir, find_latest_valid, fsync_dir,
    fsync_file, model_hash, quarantine, read_manifest, read_run_config, sha256_file, step_dir_name,
    verify_checkpoint, write_json_atomic, write_text_atomic,
)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_checkpoint(run_dir: str | Path, step: int, weights: Mapping[str, Mapping[str, Tensor]],
                     state: dict[str, Any], *, keep_last: int | None = None) -> Path:
    """Atomically write one checkpoint, point ``latest`` at it, then apply retention.

    Args:
        weights: file stem (``model``, ``model_ema``) -> state dict to save as safetensors.
        state: the resumable state (plain tensors/containers only) saved as ``state.pt``.
        keep_last: keep this many newest checkpoints (None = keep all).
    Raises:
        CheckpointError: non-finite weights, unsafe state, or an OS error while writing (the
            previous checkpoint and the retention set are then untouched).
    """
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tensors = {stem: _prepare_tensors(stem, sd) for stem, sd in weights.items()}
    check_plain_state(state)
    try:
        _write_contents(tmp, step, tensors, state)
        commit_dir(tmp, final)
        write_text_atomic(root / LATEST_FILE, final.name + "\n")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {final}: {e}; "
                              "the previous checkpoint is kept") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last is not None:
        apply_retention(run_dir, keep_last, newest=final)
    return final


def _prepare_tensors(stem: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU copies (ties broken for safetensors); refuses NaN/Inf values."""
    out = {}
    for key, value in state_dict.items():
        tensor = value.detach().to("cpu", copy=True).contiguous()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"refusing to save non-finite weights: {stem}.{key} has NaN/Inf")
        out[key] = tensor
    return out


def _file_metadata(step: int, stem: str) -> dict[str, str]:
    """One metadata key holding sorted JSON: safetensors writes a metadata dict in hash-map order,
    which changes from process to process, so several keys would give identical weights different
    file bytes, sha256s and model hashes."""
    return {"limner": json.dumps({"format": CHECKPOINT_FORMAT, "name": stem, "step": step}, sort_keys=True)}


def _write_contents(tmp: Path, step: int, tensors: Mapping[str, dict[str, Tensor]],
                    state: dict[str, Any]) -> None:
    """Write weights, state and manifest into ``tmp`` and fsync them."""
    from safetensors.torch import save_file

    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for stem, sd in tensors.items():
        save_file(sd, str(tmp / f"{stem}.safetensors"), metadata=_file_metadata(step, stem))
    torch.save(state, tmp / STATE_FILE)
    files = sorted(p.name for p in tmp.iterdir())
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {name: {"size": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
                  for name in files},
    }
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    for path in tmp.iterdir():
        fsync_file(path)
    fsync_dir(tmp)


def apply_retention(run_dir: str | Path, keep_last: int, *, newest: Path) -> list[Path]:
    """Delete checkpoints beyond the ``keep_last`` newest up to ``newest``; returns the deleted."""
    kept = [p for p in checkpoint_dirs(run_dir) if checkpoint_step(p) <= checkpoint_step(newest)]
    doomed = kept[: max(0, len(kept) - keep_last)]
    for path in doomed:
        # Rename first: a kill mid-delete must not leave a half-deleted step_* directory.
        trash = path.with_name(f".old-{path.name}-{os.getpid()}")
        try:
            os.replace(path, trash)
        except OSError as e:
            warnings.warn(f"could not delete old checkpoint {path}: {e}", CheckpointWarning)
            continue
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def remove_stale_tmp(run_dir: str | Path) -> list[Path]:
    """Remove leftovers of interrupted writes (temp dirs, the pointer's temp file, directories
    being replaced or deleted); returns what was removed."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    prefixes = (".tmp-", ".old-", f".{LATEST_FILE}.")  # the last: atomic_write's temp files
    stale = [p for p in root.iterdir() if p.name.startswith(prefixes)]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


_PLAIN = (bool, int, float, str, type(None), torch.Tensor)


def check_plain_state(obj: Any, where: str = "state") -> None:
    """Raise CheckpointError unless ``obj`` holds only what ``weights_only`` loading accepts
    (tensors, numbers, strings, None, lists/tuples, dicts with str/int keys)."""
    if isinstance(obj, _PLAIN) or isinstance(obj, torch.Size):
        if isinstance(obj, torch.Tensor) and obj.is_quantized:
            raise CheckpointError(f"{where}: quantized tensors are not supported in state")
        return
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            check_plain_state(item, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"{where}: dict key {key!r} is not a str or int")
            check_plain_state(value, f"{where}.{key}")
        return
    raise CheckpointError(f"{where} holds a {type(obj).__name__}, which a weights_only "
                          "checkpoint cannot store (use tensors, numbers, strings, lists, dicts)")


# ---------------------------------------------------------------------------------------------
# Reading and validating
# ---------------------------------------------------------------------------------------------


def load_checkpoint_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Verify a checkpoint and load its ``state.pt`` (weights_only)."""
    verify_checkpoint(checkpoint_dir)
    return load_state(Path(checkpoint_dir) / STATE_FILE)


