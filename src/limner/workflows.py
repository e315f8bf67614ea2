"""Plain library functions behind the CLI commands (and, later, the studio's jobs).

``train`` goes from a data folder to a run folder; generation lives in
``limner.generation.pipeline``. The CLI only parses options into these calls.
"""

from __future__ import annotations

import os
import sys
import uuid
from types import SimpleNamespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from limner import __version__
from limner.conditioning import CondKind
from limner.errors import DataError, UsageError
from limner.models.base import DataInfo
from limner.models.registry import DEFAULT_FAMILY, declaration, family_class

GRID_SIZE = 8


@dataclass
class TrainOptions:
    """Everything ``limner train`` accepts, already validated for type and range."""

    data: Path
    out: Path
    family: str | None = None  # None = "diffusion" for a new run, the saved family on resume
    preset: str = "small"
    resolution: int = 32
    cond: str | None = None  # None = follow the data
    text_encoder: str = "trained"
    resume: bool = False
    overwrite: bool = False
    device: str = "cpu"
    progress: bool = True
    cache_dir: Path | None = None
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides (steps, lr, ...)
    family_options: dict[str, Any] = field(default_factory=dict)  # extra create() args (vae=...)
    family_overrides: dict[str, Any] = field(default_factory=dict)  # nested config fields (--set family.*)
    eval_every: int = 0  # in-training evaluation every K steps (0 = off)
    eval_num: int = 500
    eval_metric: str = "fid"
    extractor: str | None = None
    inception: Path | None = None
    callbacks: list[Any] = field(default_factory=list)  # extra trainer callbacks (e.g. a time budget)
    explain: bool = True  # live "how it learns" capture into RUN/explain/ at checkpoints (limner.explain.live)


def train_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``--set train.*`` values checked against the TrainConfig field each replaces (a typo or a
    wrong type is a UsageError naming it); the device has its own option."""
    from limner.overrides import merge_overrides
    from limner.training.config import TrainConfig

    merged = merge_overrides(TrainConfig().to_dict(), settings, where="train",
                             fixed={"device": "use --device"})
    return {key: merged[key] for key in settings}


def default_cond(dataset) -> CondKind:
    """Captions -> text, labels -> class, neither -> unconditional."""
    if dataset.captions is not None and any(c.strip() for c in dataset.captions):
        return CondKind.text
    if dataset.labels is not None:
        return CondKind.class_
    return CondKind.none


def resolve_device(name: str) -> str:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a usage error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device: cuda requested but no CUDA device is available (use --device cpu)")
    return name


def check_paths(opts: TrainOptions) -> None:
    """Refuse bad data/output paths before anything is built."""
    if not opts.data.exists():
        raise UsageError(f"DATA: {opts.data} does not exist")
    data_root = opts.data.resolve()
    out = opts.out.resolve()
    if out == data_root or (data_root.is_dir() and data_root in out.parents):
        raise UsageError(f"--out: {opts.out} is inside the dataset {opts.data}; choose another folder")
    if opts.resume:
        if not (out / "config.json").is_file():
            raise UsageError(f"--resume: {opts.out} is not a run folder (no config.json)")
    elif out.exists() and any(out.iterdir()) and not opts.overwrite:
        raise UsageError(
            f"--out: {opts.out} is not empty; use --resume to continue that run or --overwrite"
        )


def sample_grid_requests(dataset, cond: CondKind) -> tuple[list, list[str] | None]:
    """Fixed prompts/labels and seeds for the grids written during training: only the inputs
    the model is conditioned on, so the grid's captions never claim a prompt it ignores."""
    from limner.training.callbacks import default_sample_requests

    view = SimpleNamespace(
        captions=dataset.captions if cond == CondKind.text else None,
        labels=dataset.labels if cond == CondKind.class_ else None,
        class_names=dataset.class_names,
    )
    return default_sample_requests(view, GRID_SIZE, seed=0)


def build_run_config(opts: TrainOptions, family, train_cfg, dataset) -> dict[str, Any]:
    """The resolved run config written to ``config.json``."""
    return {
        "limner_version": __version__,
        "run_id": uuid.uuid4().hex[:12],
        "family": {"name": family.name, "config": family.config_dict()},
        "data": {
            "path": str(opts.data.resolve()),
            "content_hash": dataset.content_hash,
            "num_images": len(dataset),
            "resolution": dataset.resolution,
            "channels": dataset.channels,
            "source_kind": dataset.source_kind,
            "skipped": len(dataset.skipped),
        },
        "train": train_cfg.to_dict(),
    }


def train(opts: TrainOptions):
    """Train (or resume) a run: data -> family -> Trainer.fit. Returns the trainer's result."""
    from limner.data.dataset import load_dataset
    from limner.training.callbacks import SampleGridCallback
    from limner.training.checkpoint import read_run_config
    from limner.training.config import TrainConfig
    from limner.training.trainer import Trainer

    check_paths(opts)
    device = resolve_device(opts.device)
    if opts.resume:
        run_config = read_run_config(opts.out)
        check_resume_matches(opts, run_config)
        fam_cls = family_class(run_config["family"]["name"])
        saved = run_config["train"]
        train_cfg = TrainConfig.from_dict({**saved, **opts.train, "device": device})
        family = fam_cls.from_config(run_config["family"]["config"])
        data_cfg = run_config["data"]
        dataset = load_dataset(
            opts.data, data_cfg["resolution"], channels=data_cfg["channels"],
            cache_dir=opts.cache_dir, progress=opts.progress,
        )
        if dataset.content_hash != data_cfg["content_hash"]:
            raise UsageError(
                f"DATA: {opts.data} differs from the data this run was trained on "
                f"(content hash {dataset.content_hash[:12]} vs {data_cfg['content_hash'][:12]}); "
                "resume with the same data or start a new run"
            )
        cond = family.cond_kind
        run_config = {**run_config, "train": train_cfg.to_dict()}
    else:
        fam_cls = family_class(opts.family or DEFAULT_FAMILY)
        create_options = dict(opts.family_options)
        if opts.family_overrides:
            create_options["overrides"] = opts.family_overrides
        train_cfg = TrainConfig.from_dict(
            {**fam_cls.train_defaults(opts.preset), **opts.train, "device": device}
        )
        train_cfg.validate()
        dataset = load_dataset(opts.data, opts.resolution, cache_dir=opts.cache_dir, progress=opts.progress)
        cond = CondKind(opts.cond) if opts.cond else default_cond(dataset)
        info = DataInfo(
            resolution=dataset.resolution,
            channels=dataset.channels,
            captions=dataset.captions,
            num_classes=_num_classes(dataset),
            class_names=dataset.class_names,
        )
        torch.manual_seed(train_cfg.seed)  # model init is part of the run's reproducibility
        family = fam_cls.create(opts.preset, info, cond, text_encoder=opts.text_encoder,
                                **create_options)
        run_config = build_run_config(opts, family, train_cfg, dataset)
        if opts.overwrite and opts.out.exists():
            _clear_run_dir(opts.out)
    train_cfg.validate()
    report_skipped(dataset)
    callbacks = []
    if train_cfg.sample_every:
        requests, labels = sample_grid_requests(dataset, cond)
        callbacks.append(SampleGridCallback(every=train_cfg.sample_every, requests=requests, labels=labels))
    if opts.eval_every:
        callbacks.append(eval_callback(opts, train_cfg, dataset))
    if opts.explain:
        from limner.explain.live import ExplainCallback

        callbacks.append(ExplainCallback())
    callbacks.extend(opts.callbacks)
    trainer = Trainer(
        family, dataset, train_cfg, opts.out, run_config=run_config,
        callbacks=callbacks, progress=opts.progress, resume=opts.resume,
    )
    return trainer.fit()


def check_resume_matches(opts: TrainOptions, run_config: dict[str, Any]) -> None:
    """--resume continues the saved run, family included (--family may be left out): a different
    --family, or a --vae other than the VAE run
    the saved run was built from (it keeps its own copy), is a usage error instead of being
    silently ignored. Training settings (--steps, --lr, ...) may change on resume."""
    saved = run_config["family"]["name"]
    if opts.family_overrides:
        key = _first_path(opts.family_overrides)
        raise UsageError(f"--set family.{key}: a run's model settings are fixed once it starts "
                         "(train.* settings may change on resume); start a new run to change it")
    if opts.family is not None and opts.family != saved:
        raise UsageError(f"--family: {opts.out} is a {saved} run; resume it with --family {saved} "
                         "(or start a new run in another folder)")
    needs = {need.option: need for need in declaration(saved).needs}
    for option, path in opts.family_options.items():
        need = needs.get(option)
        if need is None:
            raise UsageError(f"{opts.out} is a {saved} run; --{option} does not apply to it", field=option)
        source = run_config["family"]["config"].get(need.provenance) or {}
        if source and Path(path).resolve() != Path(source["path"]):
            raise UsageError(f"{opts.out} was built on {source['path']} and keeps its own copy of that "
                             f"run; leave --{option} out to resume it", field=option)


def eval_callback(opts: TrainOptions, train_cfg, dataset):
    """The in-training evaluation; it runs at checkpoints, so K must be a multiple of save_every."""
    from limner.evaluation.callback import EvalCallback
    from limner.evaluation.evaluate import EvalOptions

    if train_cfg.save_every and opts.eval_every % train_cfg.save_every:
        raise UsageError(f"--eval-every: {opts.eval_every} is not a multiple of --save-every "
                         f"({train_cfg.save_every}); evaluation runs at checkpoints")
    if opts.extractor == "inception" and opts.inception is None:
        raise UsageError("--inception: --extractor inception needs the weights file")
    eval_opts = EvalOptions(num=opts.eval_num, seed=train_cfg.seed, kid_subset_size=min(1000, opts.eval_num))
    return EvalCallback(dataset, opts.eval_every, eval_opts, metric=opts.eval_metric, extractor=opts.extractor,
                        inception=str(opts.inception) if opts.inception else None, cache_dir=opts.cache_dir)


def report_skipped(dataset, shown: int = 5) -> None:
    """Say which files were skipped while loading, and why (the run goes on without them)."""
    if not dataset.skipped:
        return
    print(f"{len(dataset.skipped)} of {len(dataset) + len(dataset.skipped)} files skipped:", file=sys.stderr)
    for s in dataset.skipped[:shown]:
        print(f"  {s.path}: {s.reason}", file=sys.stderr)
    if len(dataset.skipped) > shown:
        print(f"  ... `limner data check {dataset_path_hint(dataset)}` lists them all", file=sys.stderr)


def dataset_path_hint(dataset) -> str:
    return str(Path(dataset.paths[0]).parent) if dataset.paths else "DATA"


def _num_classes(dataset) -> int | None:
    """Class count from the names (a class whose files were all skipped still counts)."""
    if dataset.labels is None:
        return None
    if dataset.class_names:
        return len(dataset.class_names)
    return int(dataset.labels.max()) + 1


def _clear_run_dir(out: Path) -> None:
    """--overwrite: remove a previous run's files (only the ones limner writes)."""
    import shutil

    for name in ("checkpoints", "samples", "tensorboard", "explain"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("config.json", "metrics.jsonl"):
        (out / name).unlink(missing_ok=True)


def _first_path(nested: dict[str, Any]) -> str:
    """The first dotted path in a nested override dict (for error messages)."""
    key, value = next(iter(nested.items()))
    return f"{key}.{_first_path(value)}" if isinstance(value, dict) and value else key
