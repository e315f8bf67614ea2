"""How long each explain view takes for the ``small`` presets (issue: a few seconds at most on 2
CPU cores).

Trains each family's ``small`` preset for a few steps (the views' cost depends on the network's
size, not on how well it is trained) on the bundled emoji data: text-conditioned diffusion and
GAN, an unconditional VAE and latent diffusion on it, and the token families: a VQ-VAE
(``--preset vq-small``, unconditional, as the token families need) and text-conditioned MaskGIT
and autoregressive runs on its codes. Then times every view that applies
(median of ``--repeats``), with the live frames in place as ``limner train`` leaves them, and
the timeline once more regenerating a frame per checkpoint (what a run trained with
``--no-explain`` costs the first time).

    .venv/bin/python benchmarks/explain_speed.py        # ~4 min on 2 cores
    .venv/bin/python benchmarks/explain_speed.py --families token   # only the token runs

On a machine busy with other work every figure is an upper bound of what the view costs with
the cores to itself; the 1-minute load average at the end is recorded beside the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = REPO / "data" / "emoji-demo"


def train(out: Path, family: str, cache: Path, steps: int, preset: str = "small", **kw) -> Path:
    from limner.workflows import TrainOptions, train as run_train

    shutil.rmtree(out, ignore_errors=True)
    run_train(TrainOptions(data=DATA, out=out, family=family, preset=preset, progress=False,
                           cache_dir=cache, train={"steps": steps, "save_every": steps // 2,
                                                   "sample_every": 0, "tensorboard": False}, **kw))
    return out


def sample_png(run: Path, out: Path) -> Path:
    from limner.generation.pipeline import generate, save_images
    from limner.generation.request import GenerationRequest

    shutil.rmtree(out, ignore_errors=True)
    kind = json.loads((run / "config.json").read_text())["family"]["config"].get("encoder", {}).get("kind")
    images = generate(GenerationRequest(run=str(run), prompt="red heart" if kind == "text" else None,
                                        label=0 if kind == "class" else None, seed=1, num=1))
    return save_images(images, out)[0]


def _has_text(run: Path) -> bool:
    return json.loads((run / "config.json").read_text())["family"]["config"].get("encoder", {}).get("kind") == "text"


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of this process (all its threads). On a busy
    machine the CPU seconds are the better measure: with the cores to itself the wall time
    is at most that."""
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/limner-explain-speed"))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "explain_speed")
    p.add_argument("--families", choices=["all", "pixel", "token"], default="all",
                   help="train and time the pixel/latent families (diffusion, GAN, VAE, latent "
                        "diffusion), the token families (VQ-VAE + MaskGIT, autoregressive) or all")
    p.add_argument("--runs", nargs="*", metavar="NAME=RUN_DIR",
                   help="time these existing runs instead of training new ones")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from limner.explain import compute_view
    from machine import machine_description

    w, cache = args.work_dir, args.work_dir / "cache"
    if args.runs:  # existing small-preset runs: NAME=RUN_DIR
        runs = {name: Path(path) for name, _, path in (r.partition("=") for r in args.runs)}
        cache = None
    else:
        runs = {}
        if args.families in ("all", "pixel"):
            runs["diffusion (text)"] = train(w / "diffusion", "diffusion", cache, args.steps)
            runs["gan (text)"] = train(w / "gan", "gan", cache, args.steps)
            runs["vae"] = train(w / "vae", "vae", cache, args.steps, cond="none")
            runs["latent-diffusion"] = train(w / "ldm", "latent-diffusion", cache, args.steps,
                                             cond="none", family_options={"vae": runs["vae"]})
        if args.families in ("all", "token"):  # the VQ-VAE is their tokenizer, not timed itself
            vq = train(w / "vq", "vae", cache, args.steps, preset="vq-small", cond="none")
            runs["maskgit (text)"] = train(w / "maskgit", "maskgit", cache, args.steps,
                                           family_options={"vq": vq})
            runs["autoregressive (text)"] = train(w / "ar", "autoregressive", cache, args.steps,
                                                  family_options={"vq": vq})
    views = {
        "timeline": dict(generate_missing=False),
        "timeline (regenerated)": "timeline",
        "step": {}, "features": {}, "filmstrip": None, "dynamics": {}, "attention": dict(prompt="red heart"),
    }
    table: dict[str, dict[str, tuple[float, float] | None]] = {}
    for name, run in runs.items():
        png = sample_png(run, w / f"png-{run.name}")
        table[name] = {}
        for view, params in views.items():
            if view == "attention" and not _has_text(run):
                table[name][view] = None
                continue
            if params == "timeline":
                if args.runs:  # never delete a given run's frames: regenerate them all instead
                    table[name][view] = None
                    continue
                shutil.rmtree(run / "explain" / "timeline", ignore_errors=True)
                real, params = "timeline", {}
            else:
                real = view
            params = dict(image=str(png)) if view == "filmstrip" else params
            table[name][view] = timed(lambda: compute_view(run, real, cache_dir=cache, **params), args.repeats)
            wall, cpu = table[name][view]
            print(f"{name:22s} {view:24s} {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_description(args.threads)
    load = os.getloadavg()[0]
    note = (f"1-min load average {load:.1f} at the end on {os.cpu_count()} logical CPUs: the machine "
            "was busy with other work, so every figure is an upper bound of the view's cost"
            if load > 1.0 else "the machine was idle at the end")
    name = "results.json" if args.runs or args.families == "all" else f"results-{args.families}.json"
    (args.out / name).write_text(json.dumps(
        {"machine": machine, "load_average_1min": load, "note": note, "seconds_wall_cpu": table},
        indent=1))
    print(f"{machine}; {note}")
    cols = list(views)
    print("seconds, wall / CPU")
    print("| run | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join("-" if row[c] is None else f"{row[c][0]:.1f} / {row[c][1]:.1f}"
                                          for c in cols) + " |")


if __name__ == "__main__":
    main()
