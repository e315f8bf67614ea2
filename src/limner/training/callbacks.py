"""Trainer callbacks: everything the loop does besides optimisation.

The hook set follows minGPT's trainer callbacks and guided-diffusion's ``TrainLoop`` split
(log_step / save / sample as separate concerns). Built-ins: JSONL metrics, TensorBoard, a
progress bar, the checkpoint saver and fixed-seed sample grids. Callbacks with
``main_only = True`` run on rank 0 only; the checkpoint saver runs on every rank because saving
gathers RNG states from all of them.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence, TextIO

import numpy as np
import torch

from limner.models.request import BatchRequest
from limner.runs.layout import write_text_atomic

if TYPE_CHECKING:
    from limner.training.data_order import TrainData
    from limner.training.trainer import Trainer

METRICS_FILE = "metrics.jsonl"
SAMPLE_BATCH = 16


class Callback:
    """Base class: override the hooks you need (all default to doing nothing)."""

    main_only: ClassVar[bool] = True

    def on_train_start(self, trainer: "Trainer") -> None:
        """Before the first step of this ``fit`` (after any resume)."""

    def on_log(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        """Every ``log_every`` steps (and the last), with metrics averaged over the interval."""

    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        """After every step (``step`` = steps completed), with that step's metrics."""

    def on_save(self, trainer: "Trainer", path: Path) -> None:
        """After a checkpoint was committed at ``path``."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """When ``fit`` ends for any reason; ``trainer.outcome`` says which."""


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    """Floats that JSON can hold (NaN/Inf become null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger(Callback):
    """Appends one JSON object per logged step to ``RUN/metrics.jsonl``.

    On resume, lines past the checkpoint's step (written after it by the interrupted process)
    are dropped first, so steps stay monotonic with no double count.
    """

    def __init__(self) -> None:
        self._file: TextIO | None = None

    def on_train_start(self, trainer: "Trainer") -> None:
        path = trainer.run_dir / METRICS_FILE
        _truncate_after(path, trainer.step)
        self._file = open(path, "a", encoding="utf-8")

    def on_log(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        if self._file is None:
            return
        record = {"step": step, **{k: _json_value(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def on_train_end(self, trainer: "Trainer") -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _truncate_after(path: Path, step: int) -> None:
    """Keep only the JSONL lines with ``step <= step`` (atomic rewrite when something changes)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a killed process
    if kept != lines:
        write_text_atomic(path, "".join(kept))


class TensorBoardLogger(Callback):
    """Scalars (and sample grids) as TensorBoard events under ``RUN/tensorboard/``."""

    def __init__(self) -> None:
        self.writer: Any = None

    def on_train_start(self, trainer: "Trainer") -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events past the checkpoint left by an interrupted process.
        purge = trainer.step + 1 if trainer.step > 0 else None
        self.writer = SummaryWriter(str(trainer.run_dir / "tensorboard"), purge_step=purge)

    def on_log(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "time":
                # evaluation metrics ("eval/fid") keep their own group
                self.writer.add_scalar(key if key.startswith("eval/") else f"train/{key}", value, step)

    def add_image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        """Log an RGB uint8 [H, W, 3] image."""
        if self.writer is not None:
            self.writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def on_train_end(self, trainer: "Trainer") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressBar(Callback):
    """A tqdm bar on a terminal (postfix: loss, img/s, lr); plain periodic lines otherwise, so
    CI logs still show progress."""

    def __init__(self, stream: TextIO | None = None, line_interval: float = 10.0):
        self.stream = stream
        self.line_interval = line_interval
        self._bar: Any = None
        self._last_line = -math.inf

    def on_train_start(self, trainer: "Trainer") -> None:
        stream = self.stream or sys.stderr
        self._last_line = -math.inf
        if hasattr(stream, "isatty") and stream.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=trainer.config.steps, initial=trainer.step, file=stream,
                             unit="step", dynamic_ncols=True, desc="train")

    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix_str(_summary(metrics), refresh=False)

    def on_log(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        last = step == trainer.config.steps
        if self._bar is not None or (now - self._last_line < self.line_interval and not last):
            return
        self._last_line = now
        stream = self.stream or sys.stderr
        print(f"step {step}/{trainer.config.steps} {_summary(metrics)}", file=stream, flush=True)

    def on_train_end(self, trainer: "Trainer") -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _summary(metrics: dict[str, float]) -> str:
    """``loss=0.1234 img/s=512.0 lr=2.00e-04`` from whatever of those is present."""
    parts = []
    if "loss" in metrics:
        parts.append(f"loss={metrics['loss']:.4f}")
    if "img_per_s" in metrics:
        parts.append(f"img/s={metrics['img_per_s']:.1f}")
    lr = metrics.get("lr", next((v for k, v in metrics.items() if k.startswith("lr/")), None))
    if lr is not None:
        parts.append(f"lr={lr:.2e}")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# Checkpoints and samples
# ---------------------------------------------------------------------------------------------


class CheckpointSaver(Callback):
    """Saves every ``every`` steps and after the last step (runs on all ranks)."""

    main_only = False

    def __init__(self, every: int):
        self.every = every

    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        if step == trainer.config.steps or (self.every > 0 and step % self.every == 0):
            trainer.save_checkpoint()


RequestSource = Sequence[BatchRequest] | Callable[["Trainer"], Sequence[BatchRequest]]


class SampleGridCallback(Callback):
    """Every ``every`` steps and at the end: EMA weights in, ``family.generate`` on fixed seeds,
    ``RUN/samples/step_XXXXXX.png`` with the prompts/labels written under each image, and the
    grid in TensorBoard. Seeds never change, so grids are comparable across steps.

    Args:
        every: steps between grids (0 = only at the end of a finished run).
        requests: the forward batches to generate, or a callable building them from the trainer.
        labels: one caption per image for the grid (None = no captions).
        nrow: images per grid row (None = square-ish).
    """

    def __init__(self, every: int, requests: RequestSource, labels: Sequence[str] | None = None,
                 *, nrow: int | None = None):
        self.every = every
        self.requests = requests
        self.labels = list(labels) if labels is not None else None
        self.nrow = nrow
        self.last_step: int | None = None

    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        if self.every > 0 and step % self.every == 0 and step != trainer.config.steps:
            self.render(trainer, step)

    def on_train_end(self, trainer: "Trainer") -> None:
        if trainer.outcome == "finished" and self.last_step != trainer.step:
            self.render(trainer, trainer.step)

    def render(self, trainer: "Trainer", step: int) -> Path:
        """Generate the grid for ``step`` and write it; returns the PNG path."""
        from limner.visualization.grids import save_grid

        requests = self.requests(trainer) if callable(self.requests) else self.requests
        with trainer.sampling_weights(), torch.no_grad():
            images = [trainer.family.generate(request).images.cpu() for request in requests]
        grid = torch.cat(images)
        path = save_grid(trainer.run_dir / "samples" / f"step_{step:06d}.png", grid,
                         nrow=self.nrow, labels=self._labels_for(len(grid)))
        self._log_tensorboard(trainer, path, step)
        self.last_step = step
        return path

    def _labels_for(self, count: int) -> list[str] | None:
        if self.labels is None:
            return None
        return [self.labels[i] if i < len(self.labels) else "" for i in range(count)]

    @staticmethod
    def _log_tensorboard(trainer: "Trainer", path: Path, step: int) -> None:
        board = trainer.callback_of_type(TensorBoardLogger)
        if board is None or board.writer is None:
            return
        from PIL import Image

        with Image.open(path) as image:
            board.add_image("samples", np.asarray(image.convert("RGB")), step)


def default_sample_requests(data: "TrainData", count: int, seed: int
                            ) -> tuple[list[BatchRequest], list[str] | None]:
    """Fixed-seed requests for a grid: spread-out captions and/or cycled class labels."""
    seeds = [seed + i for i in range(count)]
    prompts, labels, names = None, None, None
    if data.captions is not None and any(c.strip() for c in data.captions):
        captions = sorted({c for c in data.captions if c.strip()})
        prompts = [captions[i * len(captions) // count] for i in range(count)]
        names = prompts
    if data.labels is not None:
        classes = sorted({int(x) for x in np.asarray(data.labels).tolist()})
        labels = [classes[i % len(classes)] for i in range(count)]
        class_names = getattr(data, "class_names", None)
        names = names or [class_names[k] if class_names else f"class {k}" for k in labels]
    requests = [
        BatchRequest(seeds=seeds[a : a + SAMPLE_BATCH],
                     prompts=prompts[a : a + SAMPLE_BATCH] if prompts else None,
                     labels=labels[a : a + SAMPLE_BATCH] if labels else None)
        for a in range(0, count, SAMPLE_BATCH)
    ]
    return requests, names
