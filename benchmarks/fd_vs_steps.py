"""FD against sampler steps for a trained run: how few network evaluations a sampler needs.

For one trained run (e.g. the limner run kept by ``quality_per_cpu_minute.py --work-dir``, or any
Fashion-MNIST run), draws the same ``--num`` seeded samples with each (sampler, steps) setting and
scores them with ``limner.evaluation`` against the training data under the dataset's default
extractor (a classifier limner trains once and caches; FD = Fréchet distance in its feature
space, not Inception FID). Writes ``results.json``, a markdown table on stdout and
``fd_vs_steps.png`` (FD against network evaluations, log x).

The deterministic solvers are the ones compared in the DPM-Solver++ paper (Lu et al. 2022,
https://arxiv.org/abs/2211.01095) and EDM (Karras et al. 2022): DPM-Solver++(2M) and Heun are
second order, Euler and DDIM first order, so at equal NFE the second-order ones should win.

    python benchmarks/fd_vs_steps.py --run RUN_DIR --data ../shared/data/fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = ["dpmpp_2m:5", "dpmpp_2m:10", "dpmpp_2m:20", "heun:5", "heun:10", "heun:20",
                    "euler:10", "euler:20", "ddim:10", "ddim:20", "ddim:50"]


def parse_setting(text: str) -> tuple[str, int]:
    name, _, steps = text.partition(":")
    return name, int(steps)


def nfe(name: str, steps: int) -> int:
    """Network evaluations of one sample (CFG doubles the batch, not the count)."""
    from limner.samplers import SAMPLER_SPECS

    per = SAMPLER_SPECS[name].evals_per_step
    return steps * per - (per - 1)  # Heun's last step is a plain Euler step


def run(args: argparse.Namespace) -> list[dict]:
    from limner.data.dataset import load_dataset
    from limner.evaluation.evaluate import EvalOptions, resolve_extractor, sample_for_eval, score_samples
    from limner.generation.pipeline import load_run

    torch.set_num_threads(args.threads)
    loaded = load_run(args.run)
    data_cfg = loaded.run_config["data"]
    dataset = load_dataset(args.data, data_cfg["resolution"], channels=data_cfg["channels"], progress=False)
    extractor, _ = resolve_extractor(args.extractor, dataset)
    rows = []
    for name, steps in map(parse_setting, args.settings):
        opts = EvalOptions(num=args.num, batch_size=args.batch_size, seed=args.seed, sampler=name, steps=steps,
                           kid_subset_size=min(1000, args.num))
        start = time.perf_counter()
        samples = sample_for_eval(loaded.family, dataset, opts, progress=False)
        seconds = time.perf_counter() - start
        m = score_samples(samples, dataset, extractor, opts).result["metrics"]
        rows.append({"sampler": name, "steps": steps, "nfe": nfe(name, steps), "fd": m["fid"], "kid": m["kid"],
                     "kid_std": m["kid_std"], "precision": m["precision"], "recall": m["recall"],
                     "sample_seconds": seconds})
        print(f"{name:>10} {steps:>3} steps ({rows[-1]['nfe']:>3} NFE): FD {m['fid']:.3f}  "
              f"KID {m['kid']:.4f}  {seconds:.0f} s", file=sys.stderr, flush=True)
    return rows


def write(rows: list[dict], args: argparse.Namespace, extractor_note: str) -> None:
    from machine import machine_description  # the sampling seconds depend on the CPU

    from limner.visualization.plots import line_chart

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"machine": machine_description(args.threads),
                                                       "run": str(args.run), "num": args.num, "rows": rows,
                                                       "extractor": extractor_note}, indent=2))
    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        xs, ys = series.setdefault(r["sampler"], ([], []))
        xs.append(r["nfe"])
        ys.append(r["fd"])
    ticks = sorted({5, 10, 20, 50} | {r["nfe"] for r in rows if r["nfe"] not in (9, 19, 39)})
    line_chart(series, logx=True, xticks=ticks, title=f"FD vs network evaluations ({args.num} samples)",
               xlabel="network evaluations per sample (log scale)", ylabel="FD").save(args.out / "fd_vs_steps.png")
    print("| sampler | steps | NFE | FD | KID | precision | recall | sampling s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['fd']:.3f} | {r['kid']:.4f} ± {r['kid_std']:.4f} "
              f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['sample_seconds']:.0f} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="trained run folder")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "fashion-mnist")
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, help="SAMPLER:STEPS items")
    p.add_argument("--num", type=int, default=1000, help="samples per setting (default: 1000)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--extractor", help="extractor folder (default: the dataset's cached default)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fd_vs_steps")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run(args)
    write(rows, args, args.extractor or "the dataset's default (cached classifier)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
