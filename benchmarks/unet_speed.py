"""Training and sampling speed of limner's U-Net against diffusers' UNet2DModel of the same shape.

Shape (both models): 32x32x3 images, 4 levels of 32-64-128-128 channels, 2 residual blocks per
level (3 in the decoder), self-attention at 8x8 and in the middle block, 128-wide noise embedding
(limner's ``small`` preset; diffusers' DownBlock2D/AttnDownBlock2D/UpBlock2D/AttnUpBlock2D).

Every measurement runs in its own subprocess, so peak RSS (``ru_maxrss``) belongs to one model,
one precision and one mode; both kinds of worker import torch and diffusers, so their baselines
match. Workers are interleaved over several rounds and the report gives medians, because the CPU
may be shared. Training: batch 32, MSE against a fixed target, AdamW(lr=1e-4, fused=True) (what
limner's trainer uses on the CPU), the same seeded tensors for both models; a step is forward + loss + zero_grad +
backward + optimizer step. Sampling: batch 16, one network evaluation (NFE) under
``torch.inference_mode()``. Warm-up iterations are not timed. bf16 rows wrap the forward pass
(and loss) in ``torch.autocast("cpu", dtype=torch.bfloat16)`` for both models. ``--malloc tuned``
(the default) has every worker, of either model, first apply the glibc settings the ``limner``
command applies at start-up (``limner.allocator``); ``--malloc default`` leaves glibc as it is.

Usage:
    python benchmarks/unet_speed.py            # full run (a few minutes on 2 cores)
    python benchmarks/unet_speed.py --quick    # smoke run
    python benchmarks/unet_speed.py --compile  # adds torch.compile'd limner rows (slow to build)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable

from machine import machine_description

BATCH_TRAIN = 32
BATCH_SAMPLE = 16
RESOLUTION = 32
CHANNELS = (32, 64, 128, 128)

# model name → what it is. "diffusers" is the reference the ratios are taken against.
MODELS = {
    "limner": "limner UNet, preset 'small', default settings",
    "limner-nokernel": "limner UNet, default settings but no compiled kernels (LIMNER_KERNELS=0)",
    "limner-ref": "limner UNet, reference ops, NCHW (fast_ops=False, memory_format='contiguous')",
    "limner-compile": "limner UNet under torch.compile (inductor)",
    "diffusers": "diffusers UNet2DModel, default (fp32 weights, NCHW)",
    "diffusers-cl": "diffusers UNet2DModel, channels-last model and input",
}


# ---------------------------------------------------------------------------------------------
# Worker: one model, one precision, one mode
# ---------------------------------------------------------------------------------------------


def build_model(name: str) -> tuple[Any, Callable, Callable]:
    """(module, forward(x, sigma), prepare_input(x)) for a model name."""
    import torch
    import diffusers  # noqa: F401  (imported by every worker so RSS baselines match)

    if name.startswith("limner"):
        from limner.models.diffusion.unet import UNet, unet_config

        plain = name == "limner-ref"
        net = UNet(unet_config("small", fast_ops=not plain, memory_format="contiguous" if plain else "auto"))
        call = torch.compile(net) if name == "limner-compile" else net
        return net, lambda x, sigma: call(x, sigma.log() / 4), lambda x: x
    from diffusers import UNet2DModel

    net = UNet2DModel(
        sample_size=RESOLUTION, in_channels=3, out_channels=3, block_out_channels=CHANNELS,
        layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),  # 2nd = 8x8
    )
    if name == "diffusers-cl":
        net = net.to(memory_format=torch.channels_last)
        prep = lambda x: x.contiguous(memory_format=torch.channels_last)  # noqa: E731
    else:
        prep = lambda x: x  # noqa: E731
    # DDPM timestep for the same noise level: 1000 steps spanning sigma in [0.002, 80] by log.
    return net, lambda x, sigma: net(x, _timestep(sigma)).sample, prep


def _timestep(sigma: Any) -> Any:
    import math

    lo, hi = math.log(0.002), math.log(80.0)
    return ((sigma.log() - lo) / (hi - lo) * 999).clamp(0, 999)


def _data(batch: int, seed: int) -> tuple[Any, Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, RESOLUTION, RESOLUTION, generator=g)
    target = torch.randn(batch, 3, RESOLUTION, RESOLUTION, generator=g)
    sigma = (torch.randn(batch, generator=g) * 1.2 - 1.2).exp()  # EDM's log-normal sigma
    return x, target, sigma


def _timed(fn: Callable[[], None], warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run_worker(name: str, precision: str, mode: str, warmup: int, iters: int, threads: int,
               malloc: str) -> dict:
    """Build one model, time ``iters`` training steps or network evaluations, report as a dict."""
    from limner.allocator import allocator_status, tune_allocator

    if malloc == "tuned":
        tune_allocator()  # before torch allocates anything; the same for both models
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net, forward, prep = build_model(name)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    kernels = winograd = "-"
    if name.startswith("limner"):
        from limner.nn import kernels as limner_kernels
        from limner.nn.conv import winograd_status

        kernels = limner_kernels.status()  # builds them now, outside the timed region
        winograd = winograd_status()
    rss_before = _max_rss_mb()
    step = _train_step(net, forward, prep, autocast) if mode == "train" else _sample_nfe(net, forward, prep, autocast)
    plans = nullcontext({})
    if name.startswith("limner"):
        from limner.nn import conv_plan

        plans = conv_plan.trace()  # which method each convolution part took (measured per CPU)
    t0 = time.perf_counter()
    with plans as used:
        step()  # the first call includes one-off costs (and compilation for limner-compile)
    first = time.perf_counter() - t0
    moved = sorted(f"{key}: {traced.plan.describe()}" for key, traced in used.items() if traced.moved)
    times = _timed(step, warmup - 1, iters)
    return {
        "model": name, "precision": precision, "mode": mode, "times": times,
        "batch": BATCH_TRAIN if mode == "train" else BATCH_SAMPLE,
        "first_s": first, "rss_mb": _max_rss_mb(), "rss_before_mb": rss_before,
        "params": sum(p.numel() for p in net.parameters()), "threads": torch.get_num_threads(),
        "kernels": kernels, "winograd": winograd, "allocator": allocator_status(),
        "conv_plans": (f"{len(used)} shapes, {len(moved)} not as the fixed rule" if used else "-"), "moved_parts": moved,
    }


def _train_step(net: Any, forward: Callable, prep: Callable, autocast: Callable) -> Callable[[], None]:
    """One AdamW step on a fixed batch: forward + MSE + zero_grad + backward + step."""
    import torch

    x, target, sigma = _data(BATCH_TRAIN, seed=1)
    x, target = prep(x), prep(target)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)  # what limner's trainer uses
    net.train()

    def step() -> None:
        with autocast():
            loss = (forward(x, sigma).float() - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _sample_nfe(net: Any, forward: Callable, prep: Callable, autocast: Callable) -> Callable[[], None]:
    """One network evaluation of a sampling batch under inference mode."""
    import torch

    x, _, sigma = _data(BATCH_SAMPLE, seed=2)
    x = prep(x)
    net.eval()

    def nfe() -> None:
        with torch.inference_mode(), autocast():
            forward(x, sigma)

    return nfe


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------------------------------------
# Driver: interleave workers over rounds, aggregate, print
# ---------------------------------------------------------------------------------------------


def spawn(name: str, precision: str, mode: str, args: argparse.Namespace) -> dict:
    warmup, iters = (args.train_warmup, args.train_iters) if mode == "train" else (args.sample_warmup, args.sample_iters)
    if name == "limner-compile":
        warmup = max(warmup, 3)  # recompiles for the second call's grad mode settle by then
    cmd = [sys.executable, __file__, "--worker", name, precision, mode,
           "--warmup", str(warmup), "--iters", str(iters), "--threads", str(args.threads),
           "--malloc", args.malloc]
    env = {**os.environ, "LIMNER_KERNELS": "0"} if name == "limner-nokernel" else None
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {name} {precision} {mode} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def collect(args: argparse.Namespace) -> list[dict]:
    jobs = [(m, p, mode) for p in args.precisions for mode in ("train", "sample") for m in args.models]
    results = []
    for r in range(args.rounds):
        order = jobs if r % 2 == 0 else [j for group in _reverse_models(jobs, args.models) for j in group]
        for name, precision, mode in order:
            try:
                res = spawn(name, precision, mode, args)
            except RuntimeError as err:  # a killed worker costs one measurement, not the run
                print(err, file=sys.stderr, flush=True)
                continue
            res["round"] = r
            results.append(res)
            print(f"  round {r + 1}/{args.rounds} {name:15s} {precision:5s} {mode:6s} "
                  f"median {statistics.median(res['times']) * 1e3:7.1f} ms", file=sys.stderr, flush=True)
    return results


def _reverse_models(jobs: list[tuple], models: list[str]) -> list[list[tuple]]:
    """Same jobs, models in reverse order inside each (precision, mode) group."""
    groups = [jobs[i:i + len(models)] for i in range(0, len(jobs), len(models))]
    return [list(reversed(g)) for g in groups]


def summarize(results: list[dict]) -> list[dict]:
    rows = {}
    for res in results:
        key = (res["model"], res["precision"])
        row = rows.setdefault(key, {"model": res["model"], "precision": res["precision"], "params": res["params"]})
        step = statistics.median(res["times"])  # per worker, then median over rounds
        best = min(res["times"])
        row.setdefault(res["mode"], []).append((step, best, res["rss_mb"], res["first_s"]))
    out = []
    for row in rows.values():
        for mode, batch in (("train", BATCH_TRAIN), ("sample", BATCH_SAMPLE)):
            vals = row.pop(mode, [])
            if not vals:
                continue
            med = statistics.median(v[0] for v in vals)
            row[f"{mode}_s"] = med
            row[f"{mode}_best_s"] = min(v[1] for v in vals)
            row[f"{mode}_rss_mb"] = max(v[2] for v in vals)
            row[f"{mode}_first_s"] = statistics.median(v[3] for v in vals)
        row["train_img_s"] = BATCH_TRAIN / row["train_s"] if "train_s" in row else None
        row["train_best_img_s"] = BATCH_TRAIN / row["train_best_s"] if "train_best_s" in row else None
        out.append(row)
    return out


def print_table(rows: list[dict], machine: str) -> None:
    ref = {r["precision"]: r for r in rows if r["model"] == "diffusers"}
    print(f"\nmachine: {machine}")
    print("train: batch 32, img/s; sample: batch 16, seconds per network evaluation (NFE); "
          "median over rounds [best single iteration]; RSS: peak resident set of the worker\n")
    head = (f"{'model':15s} {'prec':5s} {'train img/s':>15s} {'x diffusers':>13s} {'s/NFE':>15s} "
            f"{'x diffusers':>13s} {'RSS train':>9s} {'RSS sample':>10s} {'1st step':>8s}")
    print(head)
    print("-" * len(head))
    for r in sorted(rows, key=lambda r: (r["precision"], list(MODELS).index(r["model"]))):
        d = ref.get(r["precision"], {})
        print(f"{r['model']:15s} {r['precision']:5s} {_pair(r, 'train', '{:6.1f}'):>15s} "
              f"{_ratio(r, d, 'train'):>13s} {_pair(r, 'sample', '{:.4f}'):>15s} {_ratio(r, d, 'sample'):>13s} "
              f"{r.get('train_rss_mb', 0):7.0f}MB {r.get('sample_rss_mb', 0):8.0f}MB {r.get('train_first_s', 0):7.1f}s")
    print("\nx diffusers: limner's train img/s over diffusers' (higher is better) and s/NFE over "
          "diffusers' (lower is better), against diffusers' default at the same precision.")


def _pair(row: dict, mode: str, fmt: str) -> str:
    if f"{mode}_s" not in row:
        return "-"
    if mode == "train":
        return f"{fmt.format(row['train_img_s'])} [{fmt.format(row['train_best_img_s'])}]"
    return f"{fmt.format(row['sample_s'])} [{fmt.format(row['sample_best_s'])}]"


def _ratio(row: dict, ref: dict, mode: str) -> str:
    if f"{mode}_s" not in row or f"{mode}_s" not in ref:
        return "-"
    med, best = ref[f"{mode}_s"] / row[f"{mode}_s"], ref[f"{mode}_best_s"] / row[f"{mode}_best_s"]
    if mode == "sample":
        med, best = 1 / med, 1 / best
    return f"{med:.2f} [{best:.2f}]"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one round, few iterations (smoke run)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every worker")
    p.add_argument("--models", nargs="+", default=["limner", "diffusers", "diffusers-cl"], choices=list(MODELS))
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"],
                   help="default: fp32 and bf16, or fp32 alone on a CPU without bfloat16 vector "
                        "instructions (there a bf16 training step of either model takes ~20x longer)")
    p.add_argument("--compile", action="store_true", help="add limner-compile rows (compile time in '1st step s')")
    p.add_argument("--ablation", action="store_true",
                   help="add limner-nokernel (no compiled kernels) and limner-ref (the unoptimised ops) rows")
    p.add_argument("--train-iters", type=int, default=10)
    p.add_argument("--train-warmup", type=int, default=3)
    p.add_argument("--sample-iters", type=int, default=20)
    p.add_argument("--sample-warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--malloc", choices=["tuned", "default"], default="tuned",
                   help="glibc allocator settings for every worker: 'tuned' = what the limner command "
                        "applies (limner.allocator), 'default' = glibc's own (default: tuned)")
    p.add_argument("--json", help="also write the raw and summarised results here")
    p.add_argument("--worker", nargs=3, metavar=("MODEL", "PRECISION", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.train_iters, args.train_warmup, args.sample_iters, args.sample_warmup = 1, 2, 1, 3, 1
    if args.compile:
        args.models.append("limner-compile")
    if args.ablation:
        args.models += ["limner-nokernel", "limner-ref"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()
    if args.worker:
        print(json.dumps(run_worker(*args.worker, args.warmup, args.iters, args.threads, args.malloc)))
        return
    if args.precisions is None:
        from limner.nn.bf16 import slow_bf16_reason

        args.precisions = ["fp32", "bf16"]
        if (reason := slow_bf16_reason("cpu")) is not None:
            print(f"bf16 rows left out ({reason}; --precisions bf16 runs them anyway)", file=sys.stderr)
            args.precisions = ["fp32"]
    import platform

    import diffusers

    machine = machine_description(args.threads, f"diffusers {diffusers.__version__}",
                                  f"Python {platform.python_version()}")
    results = collect(args)
    rows = summarize(results)
    print_table(rows, machine)
    built = sorted({r["kernels"] for r in results if r["model"] == "limner"})
    if built:
        print(f"limner's compiled kernels: {'; '.join(built)}")
        print(f"limner's Winograd convolutions: {'; '.join(sorted({r.get('winograd', '-') for r in results if r['model'] == 'limner'}))}")
        for precision, mode, plans, parts in sorted({(r["precision"], r["mode"], r["conv_plans"], tuple(r["moved_parts"]))
                                                     for r in results if r["model"] == "limner"}):
            print(f"limner's convolution plans (measured on this CPU), {precision} {mode}: {plans}"
                  + "".join(f"\n  {part}" for part in parts))
    print(f"allocator (every worker): {'; '.join(sorted({r['allocator'] for r in results}))}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "malloc": args.malloc, "rows": rows, "raw": results}, f, indent=1)


if __name__ == "__main__":
    main()
