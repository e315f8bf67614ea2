"""What a job does: generation, training and evaluation through the library functions the CLI
calls (``limner.generation.pipeline``, ``limner.workflows.train``, ``limner.evaluation``).

An executor gets the job's payload (a JSON object written at submit time, paths already
resolved by the server) and a :class:`JobContext` (progress, previews, cancellation, image
storage); it returns the job's JSON result or raises. The worker owns claiming, leases and
state; executors own none of that, so the same code runs in-process and in ``limner worker``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Protocol

from limner.errors import LimnerError, UsageError
from limner.jobs.events import checkpoint_event, preview_data_url

PREVIEW_INTERVAL = 0.1  # seconds between previews of one job (a 4-step job shows every step)
LOADED_RUNS = 2  # loaded models kept per worker (LRU), so repeated prompts skip the load


class JobCancelled(Exception):
    """The job's owner cancelled it (or the worker lost its lease, or is stopping); raised
    inside the executor at the next step."""


class LeaseLost(JobCancelled):
    """The worker lost the job's lease: stop without writing anything more for the job (another
    worker may be running it)."""


class JobContext(Protocol):
    """What a running job may do besides computing (implemented by the worker)."""

    job_id: str
    owner_id: int
    device: str
    attempt: int  # 1 for a job's first claim, 2 after a worker stopped or died while running it

    def progress(self, step: int, total: int, loss: float | None = None) -> None: ...
    def preview(self, step: int, total: int, image: str) -> None: ...
    def emit(self, event: dict[str, Any]) -> None: ...
    def cancel_requested(self) -> bool: ...
    def lease_lost(self) -> bool: ...
    def save_image(self, generated: Any, parent_id: int | None) -> dict[str, Any]: ...


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

_REQUEST_FIELDS = None


def generation_request(payload: dict[str, Any]):
    """The payload's ``request`` object -> ``GenerationRequest`` (unknown keys are a usage error)."""
    from limner.generation.request import GenerationRequest

    global _REQUEST_FIELDS
    if _REQUEST_FIELDS is None:
        _REQUEST_FIELDS = {f.name for f in fields(GenerationRequest)}
    req = dict(payload["request"])
    unknown = sorted(set(req) - _REQUEST_FIELDS)
    if unknown:
        raise UsageError(f"unknown generation option {unknown[0]!r}", field=unknown[0])
    return GenerationRequest(**req)


class RunCache:
    """The last few loaded runs of this worker, keyed by folder, step and newest checkpoint."""

    def __init__(self, size: int = LOADED_RUNS) -> None:
        self.size = size
        self._runs: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run: str, step: int | str | None, device: str):
        from limner.generation.pipeline import load_run

        ckpts = Path(run) / "checkpoints"
        stamp = ckpts.stat().st_mtime_ns if ckpts.is_dir() else 0
        key = (str(Path(run).resolve()), step, device, stamp)
        with self._lock:
            if key in self._runs:
                self._runs.move_to_end(key)
                return self._runs[key]
        loaded = load_run(run, step=step, device=device)
        with self._lock:
            self._runs[key] = loaded
            while len(self._runs) > self.size:
                self._runs.popitem(last=False)
        return loaded


@dataclass
class StepReporter:
    """The sampler callback: counts steps over all forward batches, sends throttled previews
    and stops the job when it was cancelled."""

    ctx: JobContext
    total: int
    done: int = 0
    last_preview: float = 0.0

    def __call__(self, info: dict[str, Any]) -> None:
        if self.ctx.cancel_requested():
            raise JobCancelled()
        self.done = min(self.done + 1, self.total)
        self.ctx.progress(self.done, self.total)
        now = time.monotonic()
        if info.get("denoised") is not None and (now - self.last_preview >= PREVIEW_INTERVAL or self.done == self.total):
            self.last_preview = now
            self.ctx.preview(self.done, self.total, preview_data_url(info["denoised"]))


def _sampler_steps(loaded, request) -> int:
    """Callback calls per forward batch (the family's default steps when the request has none)."""
    steps = request.steps or getattr(loaded.family.config, "steps", None) or 1
    return int(steps) if loaded.family.name.endswith("diffusion") else 1


def run_generate(payload: dict[str, Any], ctx: JobContext, runs: RunCache) -> dict[str, Any]:
    """Generate the request's images, store each (PNG + thumbnail + row), return their ids."""
    from limner.generation.pipeline import generate

    request = generation_request(payload)
    loaded = runs.get(request.run, request.step, ctx.device)
    batches = -(-request.num // request.batch_size)
    reporter = StepReporter(ctx, total=_sampler_steps(loaded, request) * batches)
    ctx.progress(0, reporter.total)
    images = generate(request, loaded=loaded, callback=reporter)
    if payload.get("keep_index") is not None:  # a replay: the record's batch, one image of it
        images = [images[int(payload["keep_index"])]]
    ids = []
    for generated in images:
        summary = ctx.save_image(generated, payload.get("parent_id"))
        ids.append(summary["id"])
    return {"image_ids": ids}


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _train_callback(ctx: JobContext, run_name: str, total: int):
    """A trainer callback: progress with loss every step, checkpoint events, stop on cancel
    (saving a checkpoint first); on a lost lease stop at once without saving (another worker
    may be writing the run now)."""
    from limner.training.callbacks import Callback

    class JobProgress(Callback):
        def on_step_end(self, trainer, step: int, metrics: dict[str, float]) -> None:
            loss = metrics.get("loss")
            ctx.progress(step, total, float(loss) if loss is not None else None)
            if ctx.lease_lost():
                raise LeaseLost(f"job {ctx.job_id}: lease lost at step {step}; stopped without saving")
            if ctx.cancel_requested():
                trainer.request_stop()  # saves a checkpoint at this step, then stops

        def on_save(self, trainer, path: Path) -> None:
            ctx.emit(checkpoint_event(ctx.job_id, run_name, int(trainer.step)))

    return JobProgress()


def train_resumes(payload: dict[str, Any], attempt: int = 1) -> tuple[bool, bool]:
    """``(resume, overwrite)`` for a training job, the same for the in-process and the torchrun
    path: a resume job resumes; a job claimed again (``attempt`` > 1: its worker stopped or died)
    resumes from the checkpoint its earlier attempt left in the run folder, or starts over in
    that folder when the earlier attempt stopped before its first checkpoint. A first attempt
    never touches a folder it did not make (``limner train`` refuses a non-empty ``--out``)."""
    from limner.runs import is_run_folder, newest_checkpoint_step

    if payload.get("resume"):
        return True, False
    out = Path(payload["out"])
    if attempt <= 1 or not out.is_dir() or not any(out.iterdir()):
        return False, False
    if is_run_folder(out) and newest_checkpoint_step(out) is not None:
        return True, False
    return False, True


def train_options(payload: dict[str, Any], device: str, attempt: int = 1):
    """The ``TrainOptions`` a training job's payload stands for (no callbacks), and its total
    steps (the payload's, else the preset's). ``limner.jobs.torchrun.train_argv`` spells the
    same options as ``limner train`` arguments."""
    from limner.overrides import split_sections
    from limner.workflows import TrainOptions, train_settings

    settings = split_sections([(k, v) for k, v in (payload.get("set") or {}).items()])
    overrides = {k: v for k, v in (payload.get("train") or {}).items() if v is not None}
    overrides.update(train_settings(settings["train"]))
    resume, overwrite = train_resumes(payload, attempt)
    opts = TrainOptions(
        data=Path(payload["data"]), out=Path(payload["out"]), family=payload.get("family"),
        preset=payload.get("preset") or "small", resolution=int(payload.get("resolution") or 32),
        cond=payload.get("cond"), resume=resume, overwrite=overwrite, device=device, progress=False,
        train=overrides, family_overrides=settings["family"], family_options=payload.get("family_options") or {},
    )
    total = int(overrides.get("steps") or 0)
    if not total:
        from limner.models.registry import family_class
        from limner.training.config import TrainConfig

        total = int(TrainConfig.from_dict({**family_class(opts.family or "diffusion").train_defaults(opts.preset)}).steps)
    return opts, total


def run_train(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Train (or resume) a run folder with ``limner.workflows.train``; cancel = save and stop."""
    from limner.training.signals import TrainingInterrupted
    from limner.workflows import train

    opts, total = train_options(payload, ctx.device, getattr(ctx, "attempt", 1))
    opts.callbacks = [_train_callback(ctx, payload["name"], total)]
    try:
        result = train(opts)
    except TrainingInterrupted as stop:
        raise JobCancelled(f"stopped at step {stop.step}; checkpoint saved") from stop
    return {"run": payload["name"], "step": int(result.step)}


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def run_eval(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Score a run against the data it was trained on (``limner eval``), writing into ``out``."""
    from limner.evaluation.evaluate import EvalOptions, EvalTarget, evaluate_run
    from limner.training.checkpoint import read_run_config

    run_dir = Path(payload["run_path"])
    data = Path(payload.get("data") or read_run_config(run_dir)["data"]["path"])
    if not data.exists():
        raise UsageError(f"{data} (the run's training data) is not on this machine", field="data")
    num = int(payload.get("num") or 200)
    opts = EvalOptions(num=num, batch_size=min(64, num), kid_subset_size=min(1000, num))
    target = EvalTarget(data=data, out=Path(payload["out"]), device=ctx.device, progress=False)
    ctx.progress(0, 1)
    evaluation = evaluate_run(run_dir, target, opts)
    ctx.progress(1, 1)
    return {"run": payload["run"], "metrics": _plain(evaluation.result.get("metrics", {})),
            "result": str(Path(payload["out"]) / "result.json")}


def _plain(value: Any) -> Any:
    """JSON-safe copy (NaN and infinities become None)."""
    import math

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


EXECUTORS: dict[str, Callable[..., dict[str, Any]]] = {"train": run_train, "eval": run_eval}


def failure_reason(exc: BaseException, home: str | Path | None = None) -> str:
    """A job's kept reason: the library's message for limner errors, the type and message else,
    and a plain hint for running out of memory. Paths inside the studio's ``home`` are written
    relative to it (a job's error reaches the page; the server's own paths stay on the server)."""
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        reason = f"out of memory: {exc or 'MemoryError'} (try fewer images, a smaller batch or another device)"
    elif isinstance(exc, UsageError):
        field = getattr(exc, "field", None)
        reason = f"{field}: {getattr(exc, 'reason', exc)}" if field else str(exc)
    elif isinstance(exc, LimnerError):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    if home is not None:
        for prefix in {str(Path(home)), str(Path(home).resolve())}:
            reason = reason.replace(prefix.rstrip("/") + "/", "")
    return reason
