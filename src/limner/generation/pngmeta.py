"""Generation records inside PNG files.

Each image limner writes carries two text chunks: ``parameters``, the AUTOMATIC1111 web UI's
human-readable convention (prompt, ``Negative prompt:`` line, then ``Steps: ..., Sampler: ...``),
so other tools show it, and ``limner``, the full :class:`GenerationRecord` as JSON, which
``limner info`` prints and ``limner sample --from-image`` replays.

The last line is ``Key: value`` pairs joined by ", ". A value holding a comma, a colon, a quote or
a line break is written as a JSON string, as the web UI quotes its own; others are written
plainly. The family's options follow the fixed fields, before ``Version``: ``Truncation``
(GAN, VAE), each option of the record's ``options`` under its name with the first letter
capitalised and ``_`` as a space (``Temperature``, ``Top k``, ``Top p``), and ``Denoising
strength`` for image-to-image. Older texts lack them and read the same (:func:`parse_parameters`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from PIL import Image, PngImagePlugin

from limner.errors import LimnerError
from limner.fsutil import atomic_write
from limner.generation.request import GenerationRecord, precision_of

RECORD_KEY = "limner"
PARAMETERS_KEY = "parameters"


NEGATIVE_PREFIX = "Negative prompt: "
# a "Key: value" pair of the last line: the key, then a JSON string or text up to the next comma
_PAIR = re.compile(r'\s*([A-Za-z][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def option_key(name: str) -> str:
    """The ``parameters`` key of a family option: ``top_k`` -> ``Top k``."""
    return name.replace("_", " ").capitalize()


def _value(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n\r') else text


def a1111_parameters(record: GenerationRecord) -> str:
    """The record as A1111-style ``parameters`` text."""
    lines = [record.prompt or ""]
    precision = precision_of(record.dtype)
    if record.negative:
        lines.append(f"{NEGATIVE_PREFIX}{record.negative}")
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
        ("Truncation", record.truncation),
        *((option_key(name), record.options[name]) for name in sorted(record.options)),
        ("Denoising strength", record.strength),
        ("Version", f"limner {record.limner_version}"),
    ]
    lines.append(", ".join(f"{k}: {_value(v)}" for k, v in fields if v is not None))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict[str, str]:
    """An A1111-style ``parameters`` text (limner's, older or newer, or another tool's) as
    ``{"Prompt": ..., "Negative prompt": ..., key: value, ...}``: the last line's pairs, quoted
    values unquoted, every value a string; a missing prompt or negative prompt is absent."""
    lines = text.split("\n")
    pairs = lines.pop() if lines and _PAIR.match(lines[-1]) else ""
    out: dict[str, str] = {}
    prompt, negative = [], []
    for line in lines:
        if negative or line.startswith(NEGATIVE_PREFIX):
            negative.append(line.removeprefix(NEGATIVE_PREFIX) if not negative else line)
        else:
            prompt.append(line)
    if any(prompt):
        out["Prompt"] = "\n".join(prompt)
    if negative:
        out["Negative prompt"] = "\n".join(negative)
    for key, value in _PAIR.findall(pairs):
        value = value.strip()
        if value.startswith('"'):
            try:
                value = str(json.loads(value))
            except ValueError:
                pass
        out[key.strip()] = value
    return out


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
