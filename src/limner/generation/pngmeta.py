"""Generation records inside PNG files.

Each image limner writes carries two text chunks: ``parameters``, the AUTOMATIC1111 web UI's
human-readable convention (prompt, ``Negative prompt:`` line, then ``Steps: ..., Sampler: ...``),
so other tools show it, and ``limner``, the full :class:`GenerationRecord` as JSON, which
``limner info`` prints and ``limner sample --from-image`` replays.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, PngImagePlugin

from limner.errors import LimnerError
from limner.fsutil import atomic_write
from limner.generation.request import GenerationRecord, precision_of

RECORD_KEY = "limner"
PARAMETERS_KEY = "parameters"


def a1111_parameters(record: GenerationRecord) -> str:
    """The record as A1111-style ``parameters`` text."""
    lines = [record.prompt or ""]
    precision = precision_of(record.dtype)
    if record.negative:
        lines.append(f"Negative prompt: {record.negative}")
    fields = [
        ("Steps", record.steps),
        ("Sampler", record.sampler),
        ("CFG scale", record.cfg),
        ("Sigma max", record.sigma_max),
        ("Precision", precision if precision != "fp32" else None),  # fp32 is the default
        ("Seed", record.seed),
        ("Size", f"{record.width}x{record.height}"),
        ("Model hash", record.model_hash),
        ("Model", f"{record.run_id}@{record.step}"),
        ("Label", record.label),
        ("Family", record.family),
        ("Version", f"limner {record.limner_version}"),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in fields if v is not None))
    return "\n".join(lines)


def save_png(image: Image.Image, record: GenerationRecord, path: str | os.PathLike) -> Path:
    """Write ``image`` with its record (both chunks) atomically to ``path``."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, a1111_parameters(record))
    info.add_text(RECORD_KEY, record.to_json())
    return atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info))


def read_record(path: str | os.PathLike) -> GenerationRecord:
    """The generation record stored in a PNG limner wrote (clear error otherwise)."""
    try:
        with Image.open(path, formats=["PNG"]) as im:
            text = dict(im.text)
    except FileNotFoundError:
        raise LimnerError(f"{path}: no such file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise LimnerError(f"{path}: not a readable PNG ({e})") from None
    raw = text.get(RECORD_KEY)
    if raw is None:
        raise LimnerError(f"{path}: no limner generation record in this PNG")
    try:
        return GenerationRecord.from_dict(json.loads(raw))
    except (ValueError, TypeError) as e:
        raise LimnerError(f"{path}: malformed limner record ({e})") from None


def read_parameters(path: str | os.PathLike) -> str | None:
    """The A1111-style ``parameters`` text of a PNG, if any."""
    with Image.open(path, formats=["PNG"]) as im:
        return im.text.get(PARAMETERS_KEY)
