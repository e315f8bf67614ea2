"""Evaluation during training: metrics every K steps in the run's JSONL/TensorBoard, and the best
checkpoint by a chosen metric kept beside the latest.

It runs when a checkpoint is committed (``on_save``) at a step that is a multiple of ``every`` (and
at the end), so the metrics always belong to weights that exist on disk; ``--eval-every`` must
therefore be a multiple of ``--save-every``. Samples use the EMA weights with fixed seeds, so the
numbers of two steps differ only by the model. The reference statistics are computed once.

Files: ``RUN/eval/step_XXXXXX.json`` (the full result of each evaluation), ``RUN/eval/best.json``
(metric, value, step) and ``RUN/checkpoints/best/`` (hard links to the best step's files, so the
retention of ``--keep-last`` never deletes it; a copy where links are not possible).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from limner.data.dataset import ImageDataset
from limner.evaluation.evaluate import LOWER_IS_BETTER, EvalOptions, resolve_extractor, sample_for_eval, score_samples
from limner.evaluation.stats import ReferenceStats, reference_stats
from limner.training.callbacks import Callback, MetricsLogger, TensorBoardLogger
from limner.runs.layout import checkpoint_root, checkpoint_step, commit_dir, write_json_atomic

if TYPE_CHECKING:
    from limner.training.trainer import Trainer

log = logging.getLogger(__name__)

BEST_DIR = "best"

__all__ = ["EvalCallback", "BEST_DIR", "best_checkpoint"]


class EvalCallback(Callback):
    """Every ``every`` steps (at a checkpoint) and at the end: sample, score, log, keep the best.

    Args:
        dataset: the training data (the reference the samples are scored against).
        every: steps between evaluations (a multiple of the checkpoint interval).
        opts: sample count, seed and sampler settings.
        metric: which metric picks the best checkpoint (fid, kid, ... ; lower or higher is better
            as the metric dictates).
        extractor / inception: as for ``limner eval`` (None = the dataset's default extractor).
    """

    def __init__(self, dataset: ImageDataset, every: int, opts: EvalOptions, *, metric: str = "fid",
                 extractor: str | None = None, inception: str | None = None, cache_dir: str | None = None):
        self.dataset, self.every, self.opts, self.metric = dataset, every, opts, metric
        self.extractor_spec, self.inception, self.cache_dir = extractor, inception, cache_dir
        self.extractor: Any = None
        self.reference: ReferenceStats | None = None
        self.best: dict[str, Any] | None = None

    def on_train_start(self, trainer: "Trainer") -> None:
        self.extractor, _ = resolve_extractor(self.extractor_spec, self.dataset, inception=self.inception,
                                              device=str(trainer.device), cache_dir=self.cache_dir)
        self.reference = reference_stats(self.dataset, self.extractor, cache_dir=self.cache_dir)
        best = trainer.run_dir / "eval" / "best.json"
        if best.is_file():  # a resumed run keeps competing with its earlier best
            self.best = json.loads(best.read_text(encoding="utf-8"))

    def on_save(self, trainer: "Trainer", path: Path) -> None:
        step = checkpoint_step(path)
        if step % self.every == 0 or step == trainer.config.steps:
            self.evaluate(trainer, path)

    def evaluate(self, trainer: "Trainer", checkpoint: Path) -> dict[str, float]:
        """Score the current (EMA) weights, log the metrics and update the best checkpoint."""
        with trainer.sampling_weights():
            samples = sample_for_eval(trainer.family, self.dataset, self.opts, progress=False)
        evaluation = score_samples(samples, self.dataset, self.extractor, self.opts, reference=self.reference)
        step = trainer.step
        evaluation.result["source"] = {"run": str(trainer.run_dir), "step": step, "sampling": self.opts.sampling()}
        (trainer.run_dir / "eval").mkdir(exist_ok=True)
        write_json_atomic(trainer.run_dir / "eval" / f"step_{step:06d}.json", evaluation.result)
        metrics = {f"eval/{k}": v for k, v in evaluation.result["metrics"].items()}
        _log(trainer, step, metrics)
        self._update_best(trainer, checkpoint, evaluation.result["metrics"])
        return evaluation.result["metrics"]

    def _update_best(self, trainer: "Trainer", checkpoint: Path, values: dict[str, float]) -> None:
        if self.metric not in values:
            raise KeyError(f"--eval-metric {self.metric!r} was not computed (have: {', '.join(sorted(values))})")
        value = values[self.metric]
        if self.best is not None and not _better(self.metric, value, self.best["value"]):
            return
        self.best = {"metric": self.metric, "value": value, "step": checkpoint_step(checkpoint)}
        link_checkpoint(checkpoint, checkpoint_root(trainer.run_dir) / BEST_DIR)
        write_json_atomic(trainer.run_dir / "eval" / "best.json", self.best)
        log.info("new best %s %.4f at step %d", self.metric, value, self.best["step"])


def _better(metric: str, new: float, old: float) -> bool:
    return new < old if metric in LOWER_IS_BETTER else new > old


def _log(trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
    for kind in (MetricsLogger, TensorBoardLogger):
        logger = trainer.callback_of_type(kind)
        if logger is not None:
            logger.on_log(trainer, step, metrics)


def link_checkpoint(source: Path, target: Path) -> Path:
    """Make ``target`` a hard-linked (or copied) twin of checkpoint ``source``, atomically."""
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for item in source.iterdir():
        try:
            os.link(item, tmp / item.name)
        except OSError:
            shutil.copy2(item, tmp / item.name)
    commit_dir(tmp, target)
    return target


def best_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """``RUN/checkpoints/best`` when the run kept one."""
    path = checkpoint_root(run_dir) / BEST_DIR
    return path if (path / "manifest.json").is_file() else None
