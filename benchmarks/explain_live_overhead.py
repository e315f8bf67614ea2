"""What live explain capture costs a training run (issue: at most 5%).

Trains the ``small`` diffusion preset on the bundled emoji data (the demo's batch 16) for
``--steps`` steps with a checkpoint every ``--save-every`` steps, once with
``limner.explain.live.ExplainCallback`` and once without, alternating ``--rounds`` times, and
reports the wall time of each, the time the callback itself took, and the overhead at the
preset's own checkpoint interval (250 steps), which is what ``limner train`` users get by
default. Each checkpoint costs one fixed-seed sample batch, the timeline redraw and the dynamics
view; the per-checkpoint cost is measured directly, so the extrapolation needs no guessing.

    .venv/bin/python benchmarks/explain_live_overhead.py            # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def _timed_callback_class():
    from limner.explain.live import ExplainCallback

    class Timed(ExplainCallback):
        """Also counts the CPU seconds of the capture (robust on a busy machine)."""

        cpu_seconds = 0.0

        def on_save(self, trainer, path) -> None:
            cpu = time.process_time()
            super().on_save(trainer, path)
            self.cpu_seconds += time.process_time() - cpu

    return Timed


def TimedExplainCallback():
    return _timed_callback_class()()


def train_once(out: Path, steps: int, save_every: int, live: bool, cache: Path) -> dict[str, float]:
    from limner.workflows import TrainOptions, train

    shutil.rmtree(out, ignore_errors=True)
    callback = TimedExplainCallback()
    start, cpu = time.perf_counter(), time.process_time()
    train(TrainOptions(
        data=REPO / "data" / "emoji-demo", out=out, preset="small", progress=False, cache_dir=cache,
        family_overrides={"P_mean": -0.8}, explain=False, callbacks=[callback] if live else [],
        train={"steps": steps, "batch_size": 16, "save_every": save_every, "sample_every": 0,
               "tensorboard": False},
    ))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "callback_s": callback.seconds if live else 0.0,
            "callback_cpu_s": callback.cpu_seconds if live else 0.0, "checkpoints": steps // save_every}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-baseline", action="store_true",
                   help="train only with capture on (the CPU-time share needs no baseline run)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/limner-explain-overhead"))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "explain_live_overhead")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from machine import machine_description

    rows = {"off": [], "on": []}
    for r in range(args.rounds):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            if mode == "off" and args.skip_baseline:
                continue
            res = train_once(args.work_dir / f"{mode}{r}", args.steps, args.save_every, mode == "on",
                             args.work_dir / "cache")
            rows[mode].append(res)
            print(f"round {r} {mode}: {res['wall_s']:.1f} s (callback {res['callback_s']:.1f} s)", flush=True)
    baseline = rows["off"] or [{"wall_s": x["wall_s"] - x["callback_s"],
                                "cpu_s": x["cpu_s"] - x["callback_cpu_s"]} for x in rows["on"]]
    off = min(x["wall_s"] for x in baseline)
    on = min(x["wall_s"] for x in rows["on"])
    per_ckpt = min(x["callback_s"] / x["checkpoints"] for x in rows["on"])
    step_s = off / args.steps
    # CPU time: the callback's share of the process's CPU time (robust under contention)
    cpu_share = min(x["callback_cpu_s"] / (x["cpu_s"] - x["callback_cpu_s"]) for x in rows["on"])
    per_ckpt_cpu = min(x["callback_cpu_s"] / x["checkpoints"] for x in rows["on"])
    step_cpu = min(x["cpu_s"] for x in baseline) / args.steps
    summary = {
        "machine": machine_description(args.threads), "steps": args.steps, "save_every": args.save_every,
        "rounds": rows, "wall_off_s": off, "wall_on_s": on,
        "overhead_wall": on / off - 1, "seconds_per_checkpoint": per_ckpt, "seconds_per_step": step_s,
        "overhead_at_save_every": {str(k): per_ckpt / (k * step_s) for k in (args.save_every, 250, 500)},
        "cpu_overhead_measured": cpu_share, "cpu_seconds_per_checkpoint": per_ckpt_cpu,
        "cpu_seconds_per_step": step_cpu,
        "cpu_overhead_at_save_every": {str(k): per_ckpt_cpu / (k * step_cpu) for k in (args.save_every, 250, 500)},
        "load_average_1min": os.getloadavg()[0],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"{summary['machine']}; 1-min load average at the end {summary['load_average_1min']:.1f}")
    print(f"CPU time: capture {per_ckpt_cpu:.2f} s per checkpoint, training {step_cpu:.3f} s per step; "
          f"measured share {cpu_share:.1%}; at 250 steps per checkpoint "
          f"{summary['cpu_overhead_at_save_every']['250']:.1%}")
    print(f"| checkpoint every | overhead |\n|---:|---:|")
    print(f"| {args.save_every} (measured, wall) | {summary['overhead_wall']:.1%} |")
    for k, v in summary["overhead_at_save_every"].items():
        print(f"| {k} (from {per_ckpt:.2f} s per checkpoint, {step_s * 1000:.0f} ms per step) | {v:.1%} |")


if __name__ == "__main__":
    main()
