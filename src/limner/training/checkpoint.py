"""Run-folder checkpoints: atomic writes, manifests, retention, validation and safe loading.

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

import hashlib
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from limner.errors import CheckpointError
from limner.fsutil import atomic_write
from limner.training.safe_load import load_safetensors, load_state

CHECKPOINT_FORMAT = 1
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "latest"
CONFIG_FILE = "config.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_MAX_LISTED = 5


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (corrupt or incomplete) while looking for the newest valid one."""


def step_dir_name(step: int) -> str:
    """``step_000500`` for step 500."""
    return f"step_{step:06d}"


def checkpoint_root(run_dir: str | Path) -> Path:
    """``RUN/checkpoints``."""
    return Path(run_dir) / "checkpoints"


def checkpoint_step(path: str | Path) -> int:
    """The step encoded in a checkpoint directory name."""
    match = _STEP_DIR.match(Path(path).name)
    if not match:
        raise CheckpointError(f"{path} is not a checkpoint directory (step_NNNNNN)")
    return int(match.group(1))


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Committed checkpoint directories of a run, sorted by step (oldest first)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=checkpoint_step)


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


def _write_contents(tmp: Path, step: int, tensors: Mapping[str, dict[str, Tensor]],
                    state: dict[str, Any]) -> None:
    """Write weights, state and manifest into ``tmp`` and fsync them."""
    from safetensors.torch import save_file

    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    meta = {"step": str(step), "format": str(CHECKPOINT_FORMAT)}
    for stem, sd in tensors.items():
        save_file(sd, str(tmp / f"{stem}.safetensors"), metadata={**meta, "name": stem})
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
        _fsync_file(path)
    _fsync_dir(tmp)


def commit_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final`` (moving an existing same-step directory aside first)."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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


def quarantine(path: Path) -> Path:
    """Move an invalid checkpoint out of the way (kept for inspection as ``.corrupt-*``)."""
    target = path.with_name(f".corrupt-{path.name}-{int(time.time())}")
    os.replace(path, target)
    return target


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small UTF-8 text file via temp file + fsync + ``os.replace``, then fsync the
    folder so the rename itself survives a crash."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


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


def read_manifest(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` (CheckpointError when missing or not JSON)."""
    path = Path(checkpoint_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {checkpoint_dir} is incomplete (no manifest)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {checkpoint_dir} is corrupt (manifest: {e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"checkpoint {checkpoint_dir} is corrupt (manifest has no file list)")
    return manifest


def verify_checkpoint(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Check the format version and every file's size and sha256 against the manifest."""
    checkpoint_dir = Path(checkpoint_dir)
    manifest = read_manifest(checkpoint_dir)
    version = manifest.get("format")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT or version < 1:
        raise CheckpointError(f"checkpoint {checkpoint_dir} has format {version!r}; this limner "
                              f"reads format {CHECKPOINT_FORMAT} (upgrade limner to load it)")
    for name, entry in manifest["files"].items():
        path = checkpoint_dir / name
        if Path(name).name != name or not path.is_file():
            raise CheckpointError(f"checkpoint {checkpoint_dir} is incomplete ({name} missing)")
        if path.stat().st_size != entry.get("size"):
            raise CheckpointError(f"checkpoint {checkpoint_dir} is incomplete/corrupt "
                                  f"({name}: size mismatch vs manifest)")
        if sha256_file(path) != entry.get("sha256"):
            raise CheckpointError(f"checkpoint {checkpoint_dir} is corrupt "
                                  f"({name}: sha256 mismatch vs manifest)")
    if STATE_FILE not in manifest["files"]:
        raise CheckpointError(f"checkpoint {checkpoint_dir} is incomplete (no {STATE_FILE})")
    return manifest


def find_latest_valid(run_dir: str | Path, *, quarantine_invalid: bool = False) -> Path | None:
    """The newest checkpoint that verifies; warns (CheckpointWarning) about newer ones skipped.

    ``latest`` is a hint for humans and tools; the search covers every committed directory
    from the newest step down, so a crash between the rename and the pointer update is safe.
    """
    skipped = []
    for path in reversed(checkpoint_dirs(run_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            skipped.append((path, str(e)))
            continue
        if skipped:
            _warn_skipped(skipped, path, quarantine_invalid)
        return path
    if skipped:
        _warn_skipped(skipped, None, False)
    return None


def _warn_skipped(skipped: list[tuple[Path, str]], chosen: Path | None, move: bool) -> None:
    reasons = "; ".join(reason for _, reason in skipped)
    target = f"using {chosen}" if chosen is not None else "no valid checkpoint left"
    warnings.warn(f"skipped {len(skipped)} invalid checkpoint(s): {reasons}; {target}",
                  CheckpointWarning, stacklevel=3)
    if move:
        for path, _ in skipped:
            quarantine(path)


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


def load_checkpoint_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Verify a checkpoint and load its ``state.pt`` (weights_only)."""
    verify_checkpoint(checkpoint_dir)
    return load_state(Path(checkpoint_dir) / STATE_FILE)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``config.json``."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: {run_dir} is not a limner run folder") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return config


def model_hash(checkpoint_dir: str | Path, names: list[str]) -> str:
    """Short sha256 over the manifest hashes of ``<name>.safetensors`` for each listed name
    (e.g. ``["model_ema"]``), for generation records."""
    manifest = read_manifest(checkpoint_dir)
    digest = hashlib.sha256()
    for name in names:
        entry = manifest["files"].get(f"{name}.safetensors")
        if entry is None:
            raise CheckpointError(f"checkpoint {checkpoint_dir} has no {name}.safetensors")
        digest.update(f"{name}:{entry['sha256']}\n".encode())
    return digest.hexdigest()[:12]
