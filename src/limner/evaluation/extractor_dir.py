"""The on-disk format of an extractor limner trained (``limner eval train-extractor --out DIR``).

    DIR/extractor.json     {"format": "limner-extractor", "format_version": 1, "kind": ...,
                            "name": ..., "version": ..., "weights_sha256": ..., "config": {...},
                            "dataset": {...}, "class_names": [...] | null, "train": {...}}
    DIR/model.safetensors  the weights (no pickle anywhere)

The weights' sha256 is the extractor's ``digest``: two results name the same extractor only
when they were computed with byte-identical weights. Writes are atomic (temp folder + rename),
as for run checkpoints, so an interrupted ``train-extractor`` never leaves a half folder that
``limner eval`` would accept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from safetensors.torch import load_file, save_file
from torch import Tensor

from limner.errors import CheckpointError
from limner.runs.layout import sha256_file, write_json_atomic

__all__ = ["FORMAT", "META_FILE", "WEIGHTS_FILE", "read_extractor_dir", "write_extractor_dir"]

FORMAT = "limner-extractor"
FORMAT_VERSION = 1
META_FILE = "extractor.json"
WEIGHTS_FILE = "model.safetensors"


def write_extractor_dir(out_dir: str | os.PathLike, state_dict: Mapping[str, Tensor],
                        meta: Mapping[str, Any]) -> Path:
    """Write weights + metadata (``meta`` must hold kind, name, version, config) atomically."""
    for key in ("kind", "name", "version", "config"):
        if key not in meta:
            raise ValueError(f"extractor metadata lacks {key!r}")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        full = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta,
                "weights_sha256": sha256_file(tmp / WEIGHTS_FILE)}
        write_json_atomic(tmp / META_FILE, full)
        if out.exists():
            if not (out / META_FILE).is_file():
                raise CheckpointError(f"{out} exists and is not a limner extractor folder; not overwriting it")
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_extractor_dir(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(metadata, weights) of an extractor folder, with the weights' hash verified."""
    root = Path(path)
    meta_path, weights_path = root / META_FILE, root / WEIGHTS_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{root} is not a limner extractor folder (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a limner extractor description")
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} is missing")
    digest = sha256_file(weights_path)
    if digest != meta.get("weights_sha256"):
        raise CheckpointError(f"{weights_path} does not match the sha256 in {META_FILE} (corrupt or replaced)")
    try:
        weights = load_file(str(weights_path))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{weights_path} cannot be read: {e}") from None
    return meta, weights
