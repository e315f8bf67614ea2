"""Sample quality per model family on Fashion-MNIST (32 px) after a fixed CPU budget.

Each family trains with ``limner.workflows.train`` (what ``limner train`` runs) in its own
subprocess with ``torch.set_num_threads(threads)`` until the process has used
``threads x budget_min x 60`` seconds of CPU time (``time.process_time``: every thread of the
process, counted from the start of the worker, so data loading and model building count). A
callback then calls ``Trainer.request_stop()``; the trainer saves a checkpoint and raises
``TrainingInterrupted``. CPU time, not wall time, is the budget so that other load on a shared
machine slows a run down without changing what it learns; wall time is recorded too.

Then the EMA weights are loaded from the run folder and 80 samples drawn with the family's
default sampler settings (8 per class, rows = the 10 classes, the same seeds for every family):
``<out>/<family>.png``, ``<out>/all.png`` (the four grids side by side), ``<out>/results.json``,
and a markdown table on stdout for ``benchmarks/README.md``.

Families (class-conditional on the Fashion-MNIST labels):
    diffusion         pixel U-Net (EDM), preset small
    gan               StyleGAN2-lite, preset small
    vae               KL VAE, preset small, sampled from the prior
    latent-diffusion  an unconditional KL VAE (``--cond none``, its own budget) first, then the
                      diffusion preset small on its 4x8x8 latents
    maskgit           an unconditional VQ-VAE (preset vq-small, 512 codes, 8x8 tokens, its own
                      budget) first, then MaskGIT preset small on its tokens (Chang et al. 2022)
    autoregressive    the same VQ-VAE stage, then the raster-order transformer preset small
    diffusion-dit     pixel diffusion with ``--set family.backbone=dit`` (DiT-S/4, Peebles & Xie 2023)

The maskgit and autoregressive entries share one VQ-VAE stage when both run in one invocation.

Usage:
    python benchmarks/family_quality.py                     # full budgets (~32 min on a quiet 2-core machine)
    python benchmarks/family_quality.py --families gan vae  # a subset
    python benchmarks/family_quality.py --quick --threads 1 # smoke run (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from budget import ScheduleFit
from limner.training.callbacks import Callback
from machine import machine_description

DATA = Path("/work/shared/data/fashion-mnist")
RESOLUTION = 32
PER_CLASS = 8  # grid columns; rows are the 10 classes
SEED = 0  # training seed and first sampling seed (image i of the grid uses SEED + i)
NO_STEP_LIMIT = 1_000_000  # the CPU budget stops every run; a decaying LR is fitted to it
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "family_quality"
QUICK_OUT = Path("/tmp/limner-family-quality-quick")
QUICK_SCALE = 0.05


@dataclass(frozen=True)
class Stage:
    """One training run: a family, its preset and condition, and its CPU budget.

    Attributes:
        family, preset, cond: as ``limner train --family --preset --cond``.
        budget_min: CPU budget in minutes per thread (``threads x budget_min x 60`` CPU seconds).
        train: TrainConfig overrides besides the stopping and bookkeeping ones set for all.
        needs: the runs it builds on, ``--OPTION`` -> the stage whose run it is (latent
            diffusion's ``--vae``, the token families' ``--vq``).
        settings: family config overrides (``--set family.NAME=VALUE``).
    """

    family: str
    preset: str
    cond: str
    budget_min: float
    train: dict[str, Any] = field(default_factory=dict)
    needs: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


# Stage name -> stage. A benchmark entry is a list of stages; its last stage is sampled.
# Batch sizes are the presets' (32). Pixel diffusion used batch 16 (twice the steps for the same
# CPU time) while its LR was constant; with the cosine decay fitted to the budget, batch 32 did
# better in quality_per_cpu_minute.py (FD 15.4 vs 16.1), so it keeps its preset's.
STAGES: dict[str, Stage] = {
    "diffusion": Stage("diffusion", "small", "class", 8.0),
    "gan": Stage("gan", "small", "class", 8.0),
    "vae": Stage("vae", "small", "class", 4.0),
    "latent-diffusion-vae": Stage("vae", "small", "none", 4.0),
    "latent-diffusion": Stage("latent-diffusion", "small", "class", 6.0,
                              needs={"vae": "latent-diffusion-vae"}),
    # the token families: 3 + 5 CPU-minutes, the same total as pixel diffusion's 8
    "vq": Stage("vae", "vq-small", "none", 3.0),
    "maskgit": Stage("maskgit", "small", "class", 5.0, needs={"vq": "vq"}),
    "autoregressive": Stage("autoregressive", "small", "class", 5.0, needs={"vq": "vq"}),
    "diffusion-dit": Stage("diffusion", "small", "class", 8.0, settings={"backbone": "dit"}),
}
ENTRIES: dict[str, list[str]] = {
    "diffusion": ["diffusion"],
    "gan": ["gan"],
    "vae": ["vae"],
    "latent-diffusion": ["latent-diffusion-vae", "latent-diffusion"],
    "maskgit": ["vq", "maskgit"],
    "autoregressive": ["vq", "autoregressive"],
    "diffusion-dit": ["diffusion-dit"],
}
# For every stage: the budget is the only stopper, no periodic grids or checkpoints (they would
# spend budget), one final checkpoint kept.
COMMON_TRAIN = dict(steps=NO_STEP_LIMIT, sample_every=0, save_every=0, keep_last=1,
                    tensorboard=False, log_every=10)
BOOKKEEPING = {"step", "time", "epoch", "kimg", "img_per_s", "lr", "skipped"}


# ---------------------------------------------------------------------------------------------
# Worker: one stage in its own process
# ---------------------------------------------------------------------------------------------


def run_stage(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train stage ``name`` within its CPU budget, then (for an entry's last stage) sample it."""
    import torch

    torch.set_num_threads(args.threads)
    stage = STAGES[name]
    budget_s = args.threads * stage.budget_min * args.budget_scale * 60
    wall0 = time.perf_counter()
    budget = CPUBudget(budget_s, label=name)
    cpu0 = budget.start
    run_dir = args.out / "runs" / name
    result = train_stage(stage, run_dir, args.out, budget)
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    result.update(stage=name, family=stage.family, preset=stage.preset, cond=stage.cond,
                  budget_cpu_min=budget_s / 60, cpu_min=cpu_s / 60, wall_min=wall_s / 60,
                  img_per_s=result["images_seen"] / wall_s, threads=args.threads,
                  img_per_cpu_s=result["images_seen"] / cpu_s, run_dir=str(run_dir))
    if name in (stages[-1] for stages in ENTRIES.values()):
        result.update(sample_stage(name, run_dir, args))
    return result


def train_stage(stage: Stage, run_dir: Path, out: Path, budget: "CPUBudget") -> dict[str, Any]:
    """``limner.workflows.train`` with the budget callback; returns steps, images, losses."""
    from limner.training.signals import TrainingInterrupted
    from limner.workflows import TrainOptions, train

    family_options = {option: out / "runs" / name for option, name in stage.needs.items()}
    opts = TrainOptions(data=DATA, out=run_dir, family=stage.family, preset=stage.preset,
                        resolution=RESOLUTION, cond=stage.cond, overwrite=True, progress=False,
                        train={**COMMON_TRAIN, **stage.train}, family_options=family_options,
                        family_overrides=dict(stage.settings), callbacks=[budget])
    try:
        train(opts)
    except TrainingInterrupted:
        pass  # the budget ran out; the trainer saved a checkpoint at this step
    trainer = budget.trainer
    return {"steps": trainer.step, "batch_size": trainer.config.batch_size,
            "images_seen": trainer.images_seen, "params": trainable_params(trainer),
            "final_metrics": last_logged(run_dir)}


class CPUBudget(Callback):
    """Stops training once the process has used ``seconds`` of CPU time (``time.process_time``,
    all threads) since this object was made; prints a progress line every ~30 CPU seconds."""

    main_only = False

    def __init__(self, seconds: float, label: str, every_s: float = 30.0):
        self.start = time.process_time()
        self.limit, self.label, self.every_s = self.start + seconds, label, every_s
        self.trainer: Any = None
        self._next_line = 0.0
        self.fit = ScheduleFit()

    def on_train_start(self, trainer: Any) -> None:
        self.trainer = trainer
        self._next_line = time.process_time() + self.every_s

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        now = time.process_time()
        if now >= self.limit:
            trainer.request_stop()
        else:  # a decaying LR (the diffusion presets' cosine) ends with the budget
            self.fit.update(trainer, step, now - self.start, self.limit - self.start)
        if now >= self._next_line or now >= self.limit:
            self._next_line = now + self.every_s
            losses = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k not in BOOKKEEPING
                              and not k.startswith("lr/") and not k.startswith("grad_norm"))
            used, total = (now - self.start) / 60, (self.limit - self.start) / 60
            print(f"  {self.label}: step {step}, {trainer.images_seen} images, CPU {used:.1f}/{total:.1f} min, "
                  f"{losses}", file=sys.stderr, flush=True)


def trainable_params(trainer: Any) -> int:
    return sum(p.numel() for m in trainer.modules.values() for p in m.parameters() if p.requires_grad)


def last_logged(run_dir: Path) -> dict[str, float]:
    """The family's losses in the last metrics.jsonl record (averaged over its log interval)."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    if not lines:
        return {}
    record = json.loads(lines[-1])
    return {k: v for k, v in record.items() if k not in BOOKKEEPING and isinstance(v, (int, float))
            and not k.startswith("lr/")}


# ---------------------------------------------------------------------------------------------
# Sampling and scoring
# ---------------------------------------------------------------------------------------------


def sample_stage(name: str, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The 80-sample grid (rows = classes) with the family's default sampler settings."""
    from limner.generation.pipeline import load_run
    from limner.visualization.grids import save_grid

    loaded = load_run(run_dir)
    names = class_names()  # the dataset's label order (classes.txt), which the labels index
    labels = [k for k in range(len(names)) for _ in range(PER_CLASS)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    images = generate(loaded.family, labels)
    sampling = {"sampling_s": time.perf_counter() - wall0, "sampling_cpu_s": time.process_time() - cpu0}
    captions = [names[k] if i % PER_CLASS == 0 else "" for i, k in enumerate(labels)]
    grid = save_grid(args.out / f"{entry_of(name)}.png", images, nrow=PER_CLASS, labels=captions)
    sampling.update(grid=grid.name, samples=len(labels), sampler=sampler_settings(loaded.family))
    if args.score:
        sampling["score"] = score(loaded.family, args)
    return sampling


def generate(family: Any, labels: list[int], batch: int = 16) -> Any:
    """uint8 [N, C, H, W] for ``labels``, image i from seed ``SEED + i``."""
    import torch

    from limner.generation.request import BatchRequest

    chunks = []
    with torch.no_grad():
        for a in range(0, len(labels), batch):
            seeds = list(range(SEED + a, SEED + min(a + batch, len(labels))))
            chunks.append(family.generate(BatchRequest(seeds=seeds, labels=labels[a:a + batch])).images)
    return torch.cat(chunks)


def sampler_settings(family: Any) -> dict[str, Any]:
    """The defaults a request without generation options gets (the family's declared ones)."""
    out = dict(family.option_defaults())
    for spec in family.declaration.options:
        if spec.name not in out and spec.default is not None:
            out[spec.name] = spec.default
    return out


def score(family: Any, args: argparse.Namespace) -> dict[str, Any]:
    """FD/KID of ``args.score_num`` samples under the dataset's trained classifier extractor."""
    from limner.data.dataset import load_dataset
    from limner.evaluation.evaluate import EvalOptions, resolve_extractor, sample_for_eval, score_samples

    dataset = load_dataset(DATA, RESOLUTION, progress=False)
    extractor, _ = resolve_extractor(args.extractor, dataset, progress=False)
    opts = EvalOptions(num=args.score_num, seed=SEED, kid_subset_size=min(1000, args.score_num))
    samples = sample_for_eval(family, dataset, opts, progress=False)
    metrics = score_samples(samples, dataset, extractor, opts).result["metrics"]
    return {"num": args.score_num, "extractor": extractor.name, "fid": metrics["fid"], "kid": metrics["kid"]}


def class_names() -> list[str]:
    return (DATA / "classes.txt").read_text(encoding="utf-8").split("\n")[:10]


def entry_of(stage: str) -> str:
    return next(entry for entry, stages in ENTRIES.items() if stage in stages)


# ---------------------------------------------------------------------------------------------
# Driver: one subprocess per stage, then the combined figure, results.json and the table
# ---------------------------------------------------------------------------------------------


def save_stage(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Keep a stage's result in ``<out>/stages/<name>.json`` too, so that a long run that is
    stopped later (or a stage run on its own) loses nothing: ``--reuse-stages`` reads it back."""
    folder = args.out / "stages"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{result['stage']}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def reused_stage(name: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """The kept result of stage ``name`` when ``--reuse-stages`` is given and it was run with the
    same threads and budget scale, else None."""
    path = args.out / "stages" / f"{name}.json"
    if not args.reuse_stages or not path.is_file():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    budget = STAGES[name].budget_min * args.budget_scale * args.threads
    if result.get("threads") != args.threads or abs(result.get("budget_cpu_min", -1) - budget) > 1e-6:
        return None
    return result


def spawn(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one stage in a fresh process (its stderr streams through); its JSON result."""
    kept = reused_stage(name, args)
    if kept is not None:
        print(f"  {name}: reusing {args.out / 'stages' / (name + '.json')}", file=sys.stderr, flush=True)
        return kept
    cmd = [sys.executable, __file__, "--worker", name, "--threads", str(args.threads),
           "--budget-scale", str(args.budget_scale), "--out", str(args.out),
           "--score-num", str(args.score_num)] + (["--score"] if args.score else [])
    cmd += ["--extractor", args.extractor] if args.extractor else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {name} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    done: dict[str, dict[str, Any]] = {}  # a stage two entries share (the VQ-VAE) runs once
    for entry in args.families:
        stages = {}
        for name in ENTRIES[entry]:
            if name not in done:
                budget = STAGES[name].budget_min * args.budget_scale
                print(f"[{entry}] {name}: {STAGES[name].family} {STAGES[name].preset}, budget "
                      f"{budget:.2f} min x {args.threads} thread(s)", file=sys.stderr, flush=True)
                done[name] = spawn(name, args)
            stages[name] = done[name]
        results[entry] = combine(entry, stages)
    return results


def combine(entry: str, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An entry's result: its last stage's, with CPU/wall totals over all of its stages."""
    main = dict(stages[ENTRIES[entry][-1]])
    if len(stages) > 1:
        main["stages"] = {name: r for name, r in stages.items() if name != ENTRIES[entry][-1]}
        main["train_cpu_min_total"] = sum(r["cpu_min"] for r in stages.values())
        main["train_wall_min_total"] = sum(r["wall_min"] for r in stages.values())
    return main


def save_combined(results: dict[str, dict[str, Any]], out: Path) -> Path:
    """The entries' grids side by side, each titled with family, preset, CPU-min and steps."""
    from PIL import Image, ImageDraw, ImageFont

    grids = [(entry, Image.open(out / r["grid"]).convert("RGB")) for entry, r in results.items()]
    font = ImageFont.load_default(size=20)
    title_h, gap = 60, 24
    width = sum(g.width for _, g in grids) + gap * (len(grids) - 1)
    canvas = Image.new("RGB", (width, title_h + max(g.height for _, g in grids)), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for entry, grid in grids:
        for k, line in enumerate(title_lines(entry, results[entry])):
            draw.text((x + 4, 4 + k * 26), line, fill="black", font=font)
        canvas.paste(grid, (x, title_h))
        x += grid.width + gap
    path = out / "all.png"
    canvas.save(path)
    return path


def title_lines(entry: str, r: dict[str, Any]) -> list[str]:
    cpu = r.get("train_cpu_min_total", r["cpu_min"])
    steps = f"{r['steps']} steps"
    if "stages" in r:
        vae = next(iter(r["stages"].values()))
        steps = f"VAE {vae['steps']} + {r['steps']} steps"
    return [f"{entry} ({r['preset']})", f"{cpu:.1f} CPU-min, {steps}"]


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """The README table: one row per entry (latent diffusion: VAE + diffusion totals)."""
    head = ("| family | preset | params | batch | steps | images seen | CPU-min | wall-min | img/s (wall) "
            "| sampling 80 (s) | final losses |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for entry, r in results.items():
        cpu = r.get("train_cpu_min_total", r["cpu_min"])
        wall = r.get("train_wall_min_total", r["wall_min"])
        steps, images = str(r["steps"]), f"{r['images_seen']:,}"
        if "stages" in r:
            vae = next(iter(r["stages"].values()))
            steps, images = f"{vae['steps']} + {r['steps']}", f"{vae['images_seen']:,} + {r['images_seen']:,}"
        losses = ", ".join(f"{k} {v:.3g}" for k, v in loss_metrics(r["final_metrics"]).items())
        rows.append(f"| {entry} | {r['preset']} | {r['params'] / 1e6:.1f}M | {r['batch_size']} | {steps} | {images} | {cpu:.1f} | "
                    f"{wall:.1f} | {r['img_per_s']:.0f} | {r['sampling_s']:.1f} | {losses} |")
    if any("score" in r for r in results.values()):
        rows += ["", "| family | FD (classifier) | KID | samples |", "|---|---|---|---|"]
        rows += [f"| {e} | {r['score']['fid']:.2f} | {r['score']['kid']:.4f} | {r['score']['num']} |"
                 for e, r in results.items() if "score" in r]
    return "\n".join(rows)


def loss_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The loss terms of a family's logged metrics (``loss`` alone when it is not a duplicate)."""
    out = {k: v for k, v in metrics.items() if "loss" in k or k in ("recon", "kl")}
    if any(k.startswith("loss_") for k in out):
        out.pop("loss", None)  # the GAN logs its G loss twice
    return out


def merge_previous(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """A run of some ``--families`` keeps the other entries of an earlier run with the same
    threads and budget scale in ``results.json`` (so one family can be re-run alone)."""
    path = args.out / "results.json"
    if not path.is_file() or set(args.families) == set(ENTRIES):
        return results
    old = json.loads(path.read_text(encoding="utf-8"))
    same = old["settings"].get("threads") == args.threads and old["settings"].get("budget_scale") == args.budget_scale
    merged = {**(old["families"] if same else {}), **results}
    return {entry: merged[entry] for entry in ENTRIES if entry in merged}


def write_results(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> Path:
    path = args.out / "results.json"
    settings = {"threads": args.threads, "budget_scale": args.budget_scale, "data": str(DATA),
                "resolution": RESOLUTION, "stages": {n: asdict(s) for n, s in STAGES.items()},
                "common_train": COMMON_TRAIN}
    payload = {"machine": machine_description(args.threads), "settings": settings, "families": results}
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=list(ENTRIES), choices=list(ENTRIES))
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every CPU budget")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: --budget-scale {QUICK_SCALE}, at most 100 scored samples, "
                        f"output in {QUICK_OUT} (unless --out)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per worker (default: 2)")
    p.add_argument("--out", type=Path, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--score", action="store_true",
                   help="also FD/KID under the dataset's trained classifier extractor (limner.evaluation)")
    p.add_argument("--score-num", type=int, default=1000, help="samples scored per family (default: 1000)")
    p.add_argument("--extractor", metavar="DIR",
                   help="extractor folder for --score (default: the dataset's classifier, trained once and cached)")
    p.add_argument("--reuse-stages", action="store_true",
                   help="take a stage's result from <out>/stages/NAME.json (written by every stage) "
                        "instead of running it again, where threads and budget match")
    p.add_argument("--worker", choices=list(STAGES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.budget_scale, args.score_num = QUICK_SCALE, min(args.score_num, 100)
        args.out = args.out or QUICK_OUT
    args.out = (args.out or DEFAULT_OUT).resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        result = run_stage(args.worker, args)
        save_stage(result, args)
        print(json.dumps(result))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = merge_previous(run_all(args), args)
    figure = save_combined(results, args.out)
    path = write_results(results, args)
    print(f"\n{machine_description(args.threads)}; budgets x{args.budget_scale:g}; "
          f"total {(time.perf_counter() - start) / 60:.1f} min wall\n")
    print(markdown_table(results))
    print(f"\ngrids: {', '.join(str(args.out / r['grid']) for r in results.values())}\n"
          f"combined: {figure}\nresults: {path}")


if __name__ == "__main__":
    main()
