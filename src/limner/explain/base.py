"""The view registry, the result every view returns, and the run-folder helpers views share.

A view is a function ``(run: ExplainRun, **params) -> ExplainResult`` registered under a name in
:data:`VIEWS`. The CLI (``limner explain RUN VIEW``), the studio's API and the live training
callback all call :func:`compute_view`; none of them draws anything itself.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from limner.errors import UsageError
from limner.fsutil import atomic_write

__all__ = ["ExplainResult", "ExplainRun", "View", "VIEWS", "compute_view", "register_view"]

EXPLAIN_DIR = "explain"  # RUN/explain/: what the live callback writes


@dataclass
class ExplainResult:
    """What a view computed.

    Attributes:
        view: the view's name.
        data: JSON-serialisable numbers and lists (what a web page would plot itself).
        images: name -> a PIL image, or the path of an image file already on disk.
        animations: name -> frames (PIL images of one size), written as GIFs.
    """

    view: str
    data: dict[str, Any] = field(default_factory=dict)
    images: dict[str, Image.Image | Path] = field(default_factory=dict)
    animations: dict[str, list[Image.Image]] = field(default_factory=dict)

    def json_data(self) -> dict[str, Any]:
        """``data`` with only JSON types: tensors and arrays as lists, NaN/inf as None, paths as
        strings, keys as strings (what an HTTP API should return)."""
        return _plain(self.data)

    def to_json(self) -> str:
        """``data`` as JSON text (see :meth:`json_data`)."""
        return json.dumps(self.json_data(), allow_nan=False, indent=1, sort_keys=True)

    def write(self, out_dir: str | Path, *, prefix: str = "") -> list[Path]:
        """Write ``<prefix><name>.png`` per image, ``<prefix><name>.gif`` per animation and
        ``<prefix><view>.json``, atomically; returns the paths written."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, image in self.images.items():
            target = out / f"{prefix}{name}.png"
            if isinstance(image, Path):
                data = image.read_bytes()
                paths.append(atomic_write(target, lambda f, d=data: f.write(d)))
            else:
                paths.append(atomic_write(target, lambda f, im=image: im.save(f, format="PNG")))
        for name, frames in self.animations.items():
            paths.append(write_gif(out / f"{prefix}{name}.gif", frames))
        text = self.to_json()
        paths.append(atomic_write(out / f"{prefix}{self.view}.json", lambda f: f.write(text.encode())))
        return paths


def write_gif(path: Path, frames: list[Image.Image], duration_ms: int = 400) -> Path:
    """An endlessly looping GIF of ``frames`` (the last one held three times longer)."""
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    rgb = [f.convert("RGB") for f in frames]
    durations = [duration_ms] * (len(rgb) - 1) + [duration_ms * 3]

    def save(f) -> None:
        rgb[0].save(f, format="GIF", save_all=True, append_images=rgb[1:], loop=0,
                    duration=durations if len(rgb) > 1 else duration_ms, optimize=False)

    return atomic_write(path, save)


def _plain(value: Any) -> Any:
    """JSON-safe copy: tensors/arrays to lists, non-finite floats to None, paths to strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, np.integer)):
        return _plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------
# The run a view explains
# ---------------------------------------------------------------------------------------------


class ExplainRun:
    """Lazy access to a run folder: its config, metrics, checkpoints, weights and data.

    Args:
        run_dir: the run folder.
        device: where networks run ("cpu" by default).
        data: the training data folder when it moved since training (default: the path in
            ``config.json``).
        cache_dir: the decoded-image cache (default: limner's).
        dataset: the training data already in memory (the live callback passes the trainer's).
    """

    def __init__(self, run_dir: str | Path, *, device: str = "cpu", data: str | Path | None = None,
                 cache_dir: str | Path | None = None, dataset: Any = None):
        self.run_dir = Path(run_dir)
        if not (self.run_dir / "config.json").is_file():
            raise UsageError(f"RUN: {self.run_dir} is not a limner run folder (no config.json)")
        self.device = torch.device(device)
        self._data_path = Path(data) if data is not None else None
        self.cache_dir = cache_dir
        if dataset is not None:
            self.__dict__["dataset"] = dataset  # fills the cached property

    @cached_property
    def config(self) -> dict[str, Any]:
        from limner.training.checkpoint import read_run_config

        return read_run_config(self.run_dir)

    @property
    def family_name(self) -> str:
        return self.config["family"]["name"]

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` (torn lines skipped)."""
        return read_metrics(self.run_dir)

    def checkpoint_steps(self) -> list[int]:
        """Steps of the checkpoints on disk, oldest first."""
        from limner.training.checkpoint import checkpoint_dirs, checkpoint_step

        return sorted(checkpoint_step(d) for d in checkpoint_dirs(self.run_dir))

    def load(self, step: int | str | None = None, *, ema: bool = True):
        """``limner.generation.pipeline.LoadedRun`` at ``step`` (None = newest valid)."""
        from limner.generation.pipeline import load_run

        return load_run(self.run_dir, step=step, device=self.device, ema=ema)

    @cached_property
    def dataset(self):
        """The training data (decoded once, then read from limner's cache)."""
        from limner.data.dataset import load_dataset

        cfg = self.config.get("data") or {}
        path = self._data_path or (Path(cfg["path"]) if cfg.get("path") else None)
        if path is None or not path.exists():
            raise UsageError(f"--data: the run's training data {path} is not there; give its "
                             "new location with --data")
        dataset = load_dataset(path, cfg["resolution"], channels=cfg.get("channels"),
                               cache_dir=self.cache_dir, progress=False)
        if cfg.get("content_hash") and dataset.content_hash != cfg["content_hash"]:
            raise UsageError(f"--data: {path} is not the data this run was trained on "
                             "(its content hash differs)")
        return dataset


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of ``RUN/metrics.jsonl`` in file order; unreadable lines are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """A named view: ``fn(run, **params) -> ExplainResult``; ``params`` documents each option."""

    name: str
    summary: str
    fn: Callable[..., ExplainResult]
    params: dict[str, str]

    def defaults(self) -> dict[str, Any]:
        """Each parameter's default value."""
        sig = inspect.signature(self.fn)
        return {n: p.default for n, p in sig.parameters.items() if n in self.params}


VIEWS: dict[str, View] = {}


def register_view(name: str, summary: str, params: dict[str, str]):
    """Decorator adding a view function to :data:`VIEWS` (``params``: name -> help text)."""

    def add(fn: Callable[..., ExplainResult]) -> Callable[..., ExplainResult]:
        sig = inspect.signature(fn)
        undocumented = [p for p in list(sig.parameters)[1:] if p not in params]
        if undocumented:
            raise TypeError(f"view {name}: parameters {undocumented} have no help text")
        VIEWS[name] = View(name, summary, fn, params)
        return fn

    return add


RUN_OPTIONS = ("device", "data", "cache_dir")


def compute_view(run_dir: str | Path | ExplainRun, view: str, **params: Any) -> ExplainResult:
    """Compute ``view`` for the run in ``run_dir``.

    ``params`` are the view's options (``VIEWS[view].params`` documents them) plus, for any view,
    ``device`` (default "cpu"), ``data`` (the training data folder, if it moved) and
    ``cache_dir``. An unknown view or option is a ``UsageError`` naming it.
    """
    _load_views()
    if view not in VIEWS:
        raise UsageError(f"VIEW: unknown view {view!r}; views: {', '.join(VIEWS)}")
    spec = VIEWS[view]
    run_kw = {k: params.pop(k) for k in RUN_OPTIONS if k in params}
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise UsageError(f"view {view!r} has no option {', '.join(unknown)}; its options: "
                         f"{', '.join(spec.params) or 'none'}")
    run = run_dir if isinstance(run_dir, ExplainRun) else ExplainRun(run_dir, **run_kw)
    with torch.random.fork_rng(devices=[]):  # a view never moves the caller's global RNG
        return spec.fn(run, **params)


def _load_views() -> None:
    """Import the view modules (each registers itself)."""
    from limner.explain import views  # noqa: F401
