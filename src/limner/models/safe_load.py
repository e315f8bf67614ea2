"""Loading files that may come from anywhere without ever running code from them.

limner only reads two formats: safetensors (weights) and its own resume state written by
``torch.save`` with plain tensors and containers, read back with ``torch.load(...,
weights_only=True)``. The format is decided by the file's bytes, never by its extension
(InvokeAI#2946), and anything else (pickles, legacy tar checkpoints, zip files whose pickle
needs other globals) is refused without a fallback to full unpickling (CVE-2025-32434).
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from limner.errors import CheckpointError
from limner.torchcheck import require_torch

require_torch()  # torch.load below relies on 2.6+ defaults

FileFormat = Literal["safetensors", "torch-zip", "pickle", "torch-legacy", "unknown"]

_REFUSAL = ("limner only loads safetensors weights and weights_only resume checkpoints "
            "(convert trusted legacy files with a separate tool)")
# safetensors headers are small JSON; a huge declared length is a crafted file.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def detect_format(path: str | Path) -> FileFormat:
    """Guess a weights file's format from its first bytes (the extension is ignored)."""
    with open(path, "rb") as f:
        head = f.read(512)
        size = f.seek(0, 2)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= min(size - 8, MAX_SAFETENSORS_HEADER) and head[8:9] == b"{":
            return "safetensors"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "torch-legacy"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def load_state(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a limner resume state, refusing anything that
    is not a zip-format torch file of plain tensors and containers."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: resume state file not found")
    kind = detect_format(path)
    if kind != "torch-zip":
        raise CheckpointError(f"refusing to unpickle {path} (looks like {kind}): {_REFUSAL}")
    try:
        # A file object, not a path: torch must not pick a loader from the extension.
        with open(path, "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"refusing to unpickle {path}: {first}. {_REFUSAL}") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of untrusted bytes is "unreadable"
        raise CheckpointError(f"{path} is not a readable limner state file: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a limner state dict")
    return state


def load_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file onto the CPU, refusing other formats with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    kind = detect_format(path)
    if kind != "safetensors":
        if kind in ("pickle", "torch-zip", "torch-legacy"):
            raise CheckpointError(f"refusing to unpickle {path} (looks like {kind}): {_REFUSAL}")
        raise CheckpointError(f"{path} is not a valid safetensors weights file")
    _check_safetensors_header(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors weights file: {e}") from None


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty dict when absent)."""
    header = _check_safetensors_header(Path(path))
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def _check_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and sanity-check the JSON header (offsets inside the file, no trailing bytes)."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise _invalid(path, "bad header length")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _invalid(path, "header not JSON") from None
    if not isinstance(header, dict):
        raise _invalid(path, "header not an object")
    try:
        ends = [int(info["data_offsets"][1]) for key, info in header.items()
                if key != "__metadata__"]
    except (TypeError, KeyError, IndexError, ValueError):
        raise _invalid(path, "bad tensor entry") from None
    if max(ends, default=0) != size - 8 - n:
        raise _invalid(path, "data size does not match the header")
    return header


def _invalid(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a valid safetensors weights file ({why})")
