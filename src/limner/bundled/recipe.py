"""The recipe that trains limner's bundled emoji model: ``limner train`` (``limner.workflows.
train``) on the captioned Noto emoji set at 64 px with the frozen MiniLM text encoder, stopped by
a wall-clock budget to which the cosine LR decay is fitted, then exported as a small sampling-only
run folder (EMA weights in float16 safetensors) with a ``record.json``.

One command, on a CPU (hours) or a GPU (minutes)::

    scripts/train_bundled.sh --data ../shared/data/noto-emoji --device cuda --minutes 6 \\
        --out runs/bundled-emoji --export src/limner/bundled/emoji

Families (``--family``): ``diffusion`` (pixel U-Net, EDM; Karras et al. 2022) or
``latent-diffusion`` (a KL VAE trained first for ``--vae-minutes``, then the U-Net on its
4x16x16 latents; Rombach et al. 2022). Text: frozen all-MiniLM-L6-v2 features with trained
projections (Imagen-style, Saharia et al. 2022). ``LIMNER_MINILM_FEATURES`` lets a machine
without the MiniLM package train from precomputed features (``limner.conditioning.feature_file``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from limner.training.callbacks import Callback

NO_STEP_LIMIT = 1_000_000  # the budget stops the run; the LR decay is fitted to it

# Per family: (preset, TrainConfig overrides, family overrides). Chosen for a 64 px emoji set
# on one GPU for a few minutes; the same numbers run on a CPU, only slower.
UNET_64 = {"channels": [32, 64, 128, 128], "attn_resolutions": [16, 8]}
RECIPES: dict[str, dict[str, Any]] = {
    "diffusion": dict(
        preset="small",
        train=dict(batch_size=256, lr=2e-3, warmup_steps=200, lr_decay="cosine", ema_decay=0.999),
        family={"unet": UNET_64, "cfg": 3.0, "steps": 10},
    ),
    "vae": dict(
        preset="small",
        train=dict(batch_size=128, lr=1e-3, warmup_steps=100, lr_decay="cosine", ema_decay=0.995),
        family={"beta_warmup": 300},
    ),
    "latent-diffusion": dict(
        preset="small",
        train=dict(batch_size=256, lr=2e-3, warmup_steps=200, lr_decay="cosine", ema_decay=0.999),
        family={"diffusion": {"unet": {"channels": [48, 96, 192], "attn_resolutions": [8, 4]},
                              "cfg": 3.0, "steps": 10}},
    ),
}


class WallBudget(Callback):
    """Stops training after ``seconds`` of wall time (from the first step's end, so start-up is
    not counted) and refits the decaying LR schedules' last step to the time left, from the mean
    time per step so far. Prints a progress line every ``every_s`` seconds."""

    main_only = False

    def __init__(self, seconds: float, label: str, every_s: float = 20.0):
        self.seconds, self.label, self.every_s = seconds, label, every_s
        self.t0: float | None = None
        self.step0 = 0
        self.trainer: Any = None
        self._next = 0.0

    def on_train_start(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        if self.t0 is None:
            self.t0, self.step0, self._next = now, step, now + self.every_s
            return
        spent = now - self.t0
        if spent >= self.seconds:
            trainer.request_stop()
        elif trainer.config.lr_decay != "none" and step > self.step0:
            per_step = spent / (step - self.step0)
            end = step + max(int((self.seconds - spent) / per_step), 1)
            for schedule in trainer.schedulers.values():
                schedule.total = end
        if now >= self._next or spent >= self.seconds:
            self._next = now + self.every_s
            shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                             if isinstance(v, float) and "loss" in k)
            print(f"[{self.label}] step {step} {spent:.0f}/{self.seconds:.0f}s "
                  f"{trainer.images_seen} images {shown}", file=sys.stderr, flush=True)


def train_stage(family: str, data: Path, out: Path, device: str, seconds: float, *,
                resolution: int, precision: str, vae: Path | None = None,
                train_overrides: dict[str, Any] | None = None, progress: bool = False) -> dict[str, Any]:
    """One ``limner train`` run of ``family`` under a wall-clock budget; returns its summary."""
    from limner.training.signals import TrainingInterrupted
    from limner.workflows import TrainOptions, train

    recipe = RECIPES[family]
    budget = WallBudget(seconds, family)
    overrides = dict(steps=NO_STEP_LIMIT, sample_every=0, save_every=0, keep_last=1,
                     log_every=50, precision=precision, tensorboard=False, **recipe["train"])
    overrides.update(train_overrides or {})
    opts = TrainOptions(
        data=data, out=out, family=family, preset=recipe["preset"], resolution=resolution,
        cond="none" if family == "vae" else "text", text_encoder="minilm", device=device,
        overwrite=True, progress=progress, train=overrides,
        family_options={"vae": vae} if vae is not None else {},
        family_overrides=recipe["family"], callbacks=[budget],
    )
    wall0 = time.perf_counter()
    try:
        train(opts)
    except TrainingInterrupted:
        pass  # the budget ran out; the trainer saved a checkpoint at this step
    trainer = budget.trainer
    return {"family": family, "steps": trainer.step, "images_seen": trainer.images_seen,
            "batch_size": trainer.config.batch_size, "wall_s": round(time.perf_counter() - wall0, 1),
            "budget_s": seconds, "train_overrides": overrides, "family_overrides": recipe["family"],
            "last_metrics": _last_metrics(out)}


def _last_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return json.loads(lines[-1]) if lines else {}


def run_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """Train (VAE first for latent diffusion), export, and return the record."""
    import torch

    from limner.bundled.export import export_run
    from limner.workflows import resolve_device

    device = resolve_device(args.device)
    precision = args.precision or ("bf16" if device.startswith("cuda") else "fp32")
    extra = {"batch_size": args.batch_size} if args.batch_size else {}
    t0 = time.perf_counter()
    stages = []
    vae_dir = None
    if args.family == "latent-diffusion":
        vae_dir = args.out.with_name(args.out.name + "-vae")
        stages.append(train_stage("vae", args.data, vae_dir, device, args.vae_minutes * 60,
                                  resolution=args.resolution, precision=precision,
                                  train_overrides=extra, progress=args.progress))
    stages.append(train_stage(args.family, args.data, args.out, device, args.minutes * 60,
                              resolution=args.resolution, precision=precision, vae=vae_dir,
                              train_overrides=extra, progress=args.progress))
    run_config = json.loads((args.out / "config.json").read_text(encoding="utf-8"))
    record = {
        "recipe": "limner.bundled.recipe", "command": " ".join(sys.argv),
        "family": args.family, "resolution": args.resolution, "precision": precision,
        "data": run_config["data"], "stages": stages,
        "training_wall_s": round(time.perf_counter() - t0, 1),
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(),
    }
    if args.export:
        export_run(args.out, args.export, record=record, name=args.name)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m limner.bundled.recipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the captioned emoji folder (noto-emoji)")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--family", choices=["diffusion", "latent-diffusion"], default="diffusion")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--minutes", type=float, default=6.0, help="wall-clock training budget (default: 6)")
    p.add_argument("--vae-minutes", type=float, default=1.5, help="latent diffusion: the VAE's budget")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size (tiny dry runs)")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--export", type=Path, help="write the sampling-only bundled folder here")
    p.add_argument("--name", default="emoji", help="the bundled model's name (default: emoji)")
    p.add_argument("--progress", action="store_true", help="show the trainer's progress bar")
    args = p.parse_args(argv)
    record = run_recipe(args)
    print(json.dumps({k: record[k] for k in ("family", "training_wall_s", "device")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
