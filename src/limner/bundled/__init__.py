"""Models that ship inside the limner package, addressable by name wherever a run folder is
accepted (``limner sample emoji --prompt ...``, ``limner eval emoji``, the studio's model list).

A bundled model is an ordinary, sampling-only run folder under ``limner/bundled/<name>/``
(``config.json``, one checkpoint of EMA weights in safetensors, ``record.json`` with the recipe,
data hash, training time and metrics, ``LICENSE.md`` for its training data). It was trained by
limner itself: see ``limner.bundled.recipe`` and ``scripts/train_bundled.sh``.

    resolve("emoji")      -> Path of the bundled run folder (UsageError naming the known ones)
    list_bundled()        -> [BundledModel(name, path, description, family, resolution, record)]
    resolve_run(value)    -> a run folder for a RUN argument: the folder itself when it is one,
                             else the bundled model of that name, else the value unchanged
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limner.errors import UsageError

BUNDLED_ROOT = Path(__file__).resolve().parent

# name -> one-line description (the folder is BUNDLED_ROOT / name)
DESCRIPTIONS: dict[str, str] = {
    "emoji": "text-to-image, 64 px, latent diffusion trained by limner on 3,895 captioned Noto "
             "emoji (about half of them people); prompts through the frozen MiniLM encoder",
}


@dataclass(frozen=True)
class BundledModel:
    """One bundled model: its name, run folder and what its record says about it."""

    name: str
    path: Path
    description: str
    family: str
    resolution: int
    record: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _is_run(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "checkpoints").is_dir()


def list_bundled() -> list[BundledModel]:
    """Every bundled model whose folder is present, in name order."""
    out = []
    for name in sorted(DESCRIPTIONS):
        path = BUNDLED_ROOT / name
        if not _is_run(path):
            continue
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        record_path = path / "record.json"
        record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
        out.append(BundledModel(
            name=name, path=path, description=DESCRIPTIONS[name],
            family=config["family"]["name"], resolution=int(config["data"]["resolution"]),
            record=record,
        ))
    return out


def resolve(name: str) -> Path:
    """The run folder of the bundled model ``name``; UsageError naming the bundled models."""
    path = BUNDLED_ROOT / name
    if name in DESCRIPTIONS and _is_run(path):
        return path
    known = ", ".join(m.name for m in list_bundled()) or "none installed"
    raise UsageError(f"RUN: {name!r} is neither a run folder nor a bundled model ({known})")


def is_bundled_name(value: str | Path) -> bool:
    """True when ``value`` is a bare name of a present bundled model."""
    text = str(value)
    return text in DESCRIPTIONS and "/" not in text and _is_run(BUNDLED_ROOT / text)


def resolve_run(value: str | Path) -> Path:
    """A RUN argument as a folder: an existing run folder wins, then a bundled model's name;
    anything else comes back unchanged (the caller reports it)."""
    path = Path(value)
    if _is_run(path):
        return path
    if is_bundled_name(value):
        return BUNDLED_ROOT / str(value)
    return path
