"""What a front end shows about a run folder without loading a model (torch-free): a summary,
the metrics rows, the sample-grid timeline. See ``layout`` for the folder's contents."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from limner.errors import CheckpointError
from limner.runs.layout import (CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, SAMPLES_DIR, checkpoint_dirs,
                                checkpoint_step, read_run_config)

_GRID = re.compile(r"^step_(\d+)\.png$")


def newest_checkpoint_step(run_dir: str | Path) -> int | None:
    """The step of the newest committed checkpoint (one with a manifest), by folder name.
    Cheap: nothing is hashed; ``find_latest_valid`` verifies when a model is loaded."""
    steps = [checkpoint_step(p) for p in checkpoint_dirs(run_dir) if (p / MANIFEST_FILE).is_file()]
    return max(steps) if steps else None


def is_run_folder(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """{name, run_id, family, cond, resolution, step, created} of a run (CheckpointError if not a
    run). ``run_id`` is the id generation records carry (the config's, else the folder's name)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    family = config.get("family") if isinstance(config.get("family"), dict) else {}
    fam_cfg = family.get("config") if isinstance(family.get("config"), dict) else {}
    encoder = fam_cfg.get("encoder") if isinstance(fam_cfg.get("encoder"), dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    return {
        "name": run_dir.name,
        "run_id": str(config.get("run_id") or run_dir.name),
        "family": family.get("name"),
        "cond": encoder.get("kind"),
        "resolution": data.get("resolution") or fam_cfg.get("resolution"),
        "step": newest_checkpoint_step(run_dir),
        "created": os.stat(run_dir / CONFIG_FILE).st_mtime,
    }


def list_runs(root: str | Path) -> list[dict[str, Any]]:
    """Summaries of the run folders directly inside ``root``, by name; unreadable ones skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.iterdir()):
        if path.is_dir() and not path.name.startswith(".") and is_run_folder(path):
            try:
                out.append(run_summary(path))
            except CheckpointError:
                continue
    return out


def read_metrics(run_dir: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (the last ``limit``); a line being written is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        rows = metric_rows(f)
    return rows[-limit:] if limit else rows


def metric_rows(lines: Any) -> list[dict[str, Any]]:
    """The JSON objects among ``lines`` of a ``metrics.jsonl`` (str or bytes); a line that is not
    one (being written, cut by a crash) is skipped."""
    rows: list[dict[str, Any]] = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def sample_grids(run_dir: str | Path) -> dict[int, Path]:
    """step -> ``samples/step_XXXXXX.png`` (oldest first); symlinks and anything resolving
    outside the run folder are left out, so the result is safe to serve."""
    run_dir = Path(run_dir)
    folder = run_dir / SAMPLES_DIR
    if not folder.is_dir():
        return {}
    real_run = Path(os.path.realpath(run_dir))
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        m = _GRID.match(p.name)
        if m is None or p.is_symlink() or not p.is_file():
            continue
        real = Path(os.path.realpath(p))
        if real_run in real.parents:
            out[int(m.group(1))] = real
    return dict(sorted(out.items()))
