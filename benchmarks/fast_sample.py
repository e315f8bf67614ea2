"""Prompt to one 64 px image on 2 CPU cores: the bundled ``emoji`` model (limner.bundled) at batch
1, timed per sampler setting (median of ``--repeats`` after a warm-up), fp32 and bf16 autocast.

What is timed is ``limner.generation.pipeline.generate`` for one image: the prompt's MiniLM
features (cached after the first call, as in a studio session; ``--cold-text`` times the frozen
MiniLM forward too), the text projections, ``steps`` denoiser calls with classifier-free guidance
(cond and uncond in one batch of 2) and the VAE decode. Model loading is not timed.

FD per setting comes from ``limner eval emoji --steps N`` (see benchmarks/bundled/README.md); this
script reports time only. diffusers is not run: it has no implementation of limner's U-Net or its
EDM preconditioning, so "the same network and sampler" cannot be run there.

Usage:
    taskset -c 0,1 .venv/bin/python benchmarks/fast_sample.py --threads 2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--prompt", default="woman astronaut, dark skin tone")
    p.add_argument("--settings", default="dpmpp_2m:50,dpmpp_2m:10,dpmpp_2m:6,dpmpp_2m:5,dpmpp_2m:4",
                   help="comma-separated SAMPLER:STEPS[:SIGMA_MAX]")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from limner.allocator import tune_allocator

    tune_allocator()  # what the limner command does at start
    from limner.generation.pipeline import generate, load_run
    from limner.generation.request import GenerationRequest

    loaded = load_run("emoji")
    cpu = _cpu_name()
    rows = []
    for setting in args.settings.split(","):
        parts = setting.split(":")
        sampler, steps = parts[0], int(parts[1])
        sigma_max = float(parts[2]) if len(parts) > 2 else None
        for precision in ("fp32", "bf16"):
            request = GenerationRequest(run="emoji", prompt=args.prompt, seed=0, num=1, sampler=sampler,
                                        steps=steps, sigma_max=sigma_max, precision=precision)
            generate(request, loaded=loaded)  # warm-up (kernels, caches)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                generate(request, loaded=loaded)
                times.append(time.perf_counter() - t)
            row = {"sampler": sampler, "steps": steps, "sigma_max": sigma_max, "precision": precision,
                   "median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"cpu": cpu, "threads": args.threads, "torch": torch.__version__,
              "python": platform.python_version(), "prompt": args.prompt, "rows": rows}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
