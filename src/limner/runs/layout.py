"""The run folder's layout and the torch-free half of reading it: config, checkpoint folders,
manifests, verification and the newest valid checkpoint.

A run folder (``RUN/``)::

    config.json              the resolved run config (family, data, train; limner's version)
    metrics.jsonl            one JSON object per logged step
    samples/step_XXXXXX.png  fixed-seed sample grids
    checkpoints/step_XXXXXX/ one checkpoint: <name>.safetensors, <name>_ema.safetensors,
                             state.pt, manifest.json (format, step, size + sha256 per file)
    checkpoints/latest       the newest checkpoint's folder name (a hint; see find_latest_valid)

Training writes checkpoints (``limner.training.checkpoint``); generation, evaluation, the store
and the studio read them through this module, which imports neither torch nor anything above
it. Writes are atomic (``limner.fsutil``): temp file or folder, fsync, one rename, pointer last.
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
from typing import Any

from limner.errors import CheckpointError
from limner.fsutil import atomic_write

CHECKPOINT_FORMAT = 1
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "latest"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
_STEP_DIR = re.compile(r"^step_(\d+)$")


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


def commit_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final`` (moving an existing same-step directory aside first)."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def quarantine(path: Path) -> Path:
    """Move an invalid checkpoint out of the way (kept for inspection as ``.corrupt-*``)."""
    target = path.with_name(f".corrupt-{path.name}-{int(time.time())}")
    os.replace(path, target)
    return target


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small UTF-8 text file via temp file + fsync + ``os.replace``, then fsync the
    folder so the rename itself survives a crash."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    fsync_dir(path.parent)


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


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
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
        if entry is None:  # an EMA-only checkpoint (a bundled model) is known by its EMA weights
            entry = manifest["files"].get(f"{name}_ema.safetensors")
        if entry is None:
            raise CheckpointError(f"checkpoint {checkpoint_dir} has no {name}.safetensors")
        digest.update(f"{name}:{entry['sha256']}\n".encode())
    return digest.hexdigest()[:12]
