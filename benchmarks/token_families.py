"""Token families after training: MaskGIT's quality and speed against its number of steps, the
autoregressive family's tokens/s with and without the KV cache, and the DiT backbone's speed
against the U-Net's.

Reads the runs ``benchmarks/family_quality.py`` trained (``--runs`` = its ``<out>/runs``):

1. MaskGIT (Chang et al. 2022), steps 4, 8, 12, 16: FD/KID of ``--num`` class-conditional
   samples under the dataset's trained classifier extractor (as ``family_quality.py --score``),
   and sampling images/s (batch 16, wall clock, after one warm-up batch).
2. Autoregressive: tokens/s sampling a batch of 16 with the KV cache and without it (every step
   re-reads the whole prefix), and whether both give the same tokens.
3. Sampling speed of each family's defaults, one after the other (``--parts sampling``), and the
   ratio of pixel diffusion's time per image to MaskGIT's at several step counts, measured
   interleaved in one process (``--parts ratio``: rounds of diffusion, MaskGIT at each step
   count, in turn; per-round ratios of CPU time and of wall time, whose median is robust to load
   that comes and goes on a shared machine).
4. Pixel diffusion with the U-Net (preset small) and with DiT-S/4 (``--set
   family.backbone=dit``): parameters, forward GFLOPs per image (DiT counted analytically, the
   U-Net's convolutions and linear layers by forward hooks), training img/s (forward + backward + Adam, batch 32) and
   denoiser evaluations (NFE) per second at batch 16. No training run is needed for this part.

Speed figures are wall-clock on this machine with ``torch.set_num_threads(--threads)``; other load
on a shared machine lowers them, so the machine line and the load average are printed.

Usage:
    python benchmarks/token_families.py --runs /tmp/bench/fq/runs --threads 2
    python benchmarks/token_families.py --runs ... --skip-fd      # speed only
    python benchmarks/token_families.py --parts ratio --ratio-steps 10 8 --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from machine import machine_description

DATA = Path("/work/shared/data/fashion-mnist")
RESOLUTION = 32
SEED = 0


def timed(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def maskgit_steps(run: Path, steps: list[int], num: int, skip_fd: bool) -> list[dict[str, Any]]:
    from limner.data.dataset import load_dataset
    from limner.evaluation.evaluate import EvalOptions, resolve_extractor, sample_for_eval, score_samples
    from limner.generation.pipeline import load_run
    from limner.generation.request import BatchRequest

    loaded = load_run(run)
    fam = loaded.family
    rows = []
    dataset = extractor = None
    if not skip_fd:
        dataset = load_dataset(DATA, RESOLUTION, progress=False)
        extractor, _ = resolve_extractor(None, dataset, progress=False)
    for T in steps:
        batch = BatchRequest(seeds=list(range(16)), labels=[k % 10 for k in range(16)], steps=T)
        with torch.no_grad():
            seconds = timed(lambda: fam.generate(batch), repeat=2)
        row: dict[str, Any] = {"steps": T, "img_per_s": 16 / seconds}
        if not skip_fd:
            opts = EvalOptions(num=num, seed=SEED, kid_subset_size=min(1000, num), steps=T)
            samples = sample_for_eval(fam, dataset, opts, progress=False)
            metrics = score_samples(samples, dataset, extractor, opts).result["metrics"]
            row.update(fd=metrics["fid"], kid=metrics["kid"], num=num)
        print(f"  maskgit steps {T}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def autoregressive_cache(run: Path, vq: Path | None = None) -> dict[str, Any]:
    """Tokens/s with and without the KV cache; the run's model, or (no run yet) a freshly built
    preset-small model on ``vq`` (speed does not depend on the weights)."""
    from limner.generation.pipeline import load_run
    from limner.generation.request import BatchRequest
    from limner.models.base import DataInfo
    from limner.models.transformer.family import AutoregressiveFamily

    if (run / "config.json").is_file():
        fam = load_run(run).family
    else:
        fam = AutoregressiveFamily.create("small", DataInfo(resolution=RESOLUTION, channels=1, num_classes=10),
                                          "class", vq=vq)
        fam.model.eval()
    batch = BatchRequest(seeds=list(range(16)), labels=[k % 10 for k in range(16)])
    out: dict[str, Any] = {"tokens_per_image": fam.num_tokens}
    tokens = {}
    for use_cache in (True, False):
        fam.use_cache = use_cache
        with torch.no_grad():
            seconds = timed(lambda: tokens.__setitem__(use_cache, fam.sample_tokens(batch)), repeat=1)
        out["cached" if use_cache else "uncached"] = {"tokens_per_s": 16 * fam.num_tokens / seconds,
                                                     "img_per_s": 16 / seconds}
    out["same_tokens"] = bool(torch.equal(tokens[True], tokens[False]))
    print(f"  autoregressive: {out}", file=sys.stderr, flush=True)
    return out


def module_flops(model: torch.nn.Module, run) -> float:
    """2 x multiply-adds of every Conv2d and Linear in one call of ``run``."""
    total = [0.0]

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total[0] += 2 * output.numel() * module.in_channels // module.groups * kh * kw
        else:
            total[0] += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def backbone_speed() -> dict[str, Any]:
    from limner.models.base import DataInfo
    from limner.models.diffusion.dit import DiTConfig, count_flops
    from limner.models.diffusion.family import DiffusionFamily

    info = DataInfo(resolution=RESOLUTION, channels=1, num_classes=10)
    out = {}
    # DiT-S/2 (256 tokens at 32 px, ~12 GFLOPs an image) is left out: a minute a step on a CPU core
    for name, overrides in (("unet-small", {}), ("dit-S/4", {"backbone": "dit"})):
        torch.manual_seed(0)
        fam = DiffusionFamily.create("small", info, "class", overrides=overrides)
        model = fam.model
        params = sum(p.numel() for p in model.parameters())
        x = torch.randn(32, 1, RESOLUTION, RESOLUTION)
        sigma = torch.rand(32) * 5 + 0.1
        cond = model.encoder.prepare(labels=list(range(10)) * 3 + [0, 1], batch_size=32)
        if fam.config.backbone == "dit":
            gflops = count_flops(DiTConfig.from_dict(fam.config.net)) / 1e9
        else:  # convolutions and linear layers by hooks (limner's compiled kernels hide them
            # from torch's FLOP counter); attention's two matmuls are left out (small at 8x8)
            with torch.no_grad():
                gflops = module_flops(model, lambda: model(x[:1], sigma[:1], cond[slice(0, 1)])) / 1e9
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def train_step() -> None:
            loss = (model(x, sigma, cond) - x).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        model.train()
        train_s = timed(train_step, repeat=2)
        model.eval()
        with torch.no_grad():
            c16 = model.encoder(cond[slice(0, 16)])
            nfe_s = timed(lambda: model(x[:16], sigma[:16], c16), repeat=2)
        out[name] = {"params_M": params / 1e6, "gflops_per_image": gflops, "train_img_per_s": 32 / train_s,
                     "nfe_img_per_s": 16 / nfe_s}
        print(f"  {name}: {out[name]}", file=sys.stderr, flush=True)
    return out


def sampling_speed(vq: Path) -> dict[str, Any]:
    """Images/s of each family's default sampling at batch 16 (class-conditional, preset small):
    pixel diffusion (DPM-Solver++(2M), 20 steps, CFG 2: 40 network evaluations of a batch),
    MaskGIT (10 steps, CFG 2) and autoregressive (64 tokens, CFG 2, KV cache) on the VQ-VAE run
    ``vq``. Speed does not depend on the weights, so the models are freshly built."""
    from limner.generation.request import BatchRequest
    from limner.models.base import DataInfo
    from limner.models.diffusion.family import DiffusionFamily
    from limner.models.transformer.family import AutoregressiveFamily, MaskGITFamily

    info = DataInfo(resolution=RESOLUTION, channels=1, num_classes=10)
    families = {"diffusion": DiffusionFamily.create("small", info, "class")}
    for cls in (MaskGITFamily, AutoregressiveFamily):
        families[cls.name] = cls.create("small", info, "class", vq=vq)
    batch = BatchRequest(seeds=list(range(16)), labels=[k % 10 for k in range(16)])
    out = {}
    for name, fam in families.items():
        for module in fam.modules().values():
            module.eval()
        with torch.no_grad():
            seconds = timed(lambda: fam.generate(batch), repeat=1)
        out[name] = {"img_per_s": 16 / seconds, "defaults": fam.option_defaults()}
        print(f"  sampling {name}: {out[name]}", file=sys.stderr, flush=True)
    return out


def token_family(cls, vq: Path | None):
    """A fresh preset-small ``cls`` (class-conditional, 32 px, one channel) on the VQ-VAE run
    ``vq``, or, without one, on a fresh ``vq-small`` tokenizer (speed does not depend on the
    weights)."""
    from limner.conditioning import resolve_encoder_config
    from limner.models.base import DataInfo
    from limner.models.transformer.config import TransformerConfig, get_preset
    from limner.models.transformer.model import TokenNetConfig
    from limner.models.vae.family import VAEFamily

    info = DataInfo(resolution=RESOLUTION, channels=1, num_classes=10)
    if vq is not None and (vq / "config.json").is_file():
        return cls.create("small", info, "class", vq=vq)
    torch.manual_seed(0)
    vq_cfg = VAEFamily.create("vq-small", info, "none").config
    preset = get_preset("small", cls.name)
    enc = resolve_encoder_config("class", info, dim=preset.text_dim, layers=preset.text_layers)
    _, h, w = vq_cfg.latent_shape
    net = TokenNetConfig(num_codes=vq_cfg.codebook_size, seq_len=h * w, cond_dim=enc.dim,
                         causal=cls.kind == "autoregressive", **preset.net)
    return cls(TransformerConfig(preset="small", kind=cls.kind, resolution=RESOLUTION, channels=1, grid=h,
                                 net=net.to_dict(), encoder=enc.to_dict(), vq=vq_cfg.to_dict(),
                                 **cls.sampling_defaults))


def sampling_ratio(vq: Path | None, steps: list[int], rounds: int, plain: bool = False) -> dict[str, Any]:
    """Pixel diffusion's default sampling (DPM-Solver++(2M), 20 steps, CFG 2, U-Net preset
    small) against MaskGIT preset small (CFG 2) at each of ``steps``: batch 16, class-conditional,
    fresh models. ``rounds`` rounds after one warm-up round; in each, every contender samples the
    batch once, in an order that rotates from round to round. Per contender: CPU seconds (the
    process's, all threads) and wall seconds per batch, min and median; per MaskGIT setting: the
    median over rounds of diffusion's time / MaskGIT's in the same round, CPU and wall. ``plain``
    adds MaskGIT at ``steps[0]`` without its sampling shortcuts (``sampling_shortcuts``)."""
    import statistics

    from limner.generation.request import BatchRequest
    from limner.models.base import DataInfo
    from limner.models.diffusion.family import DiffusionFamily
    from limner.models.transformer.family import MaskGITFamily

    info = DataInfo(resolution=RESOLUTION, channels=1, num_classes=10)
    torch.manual_seed(0)
    diffusion = DiffusionFamily.create("small", info, "class")
    maskgit = token_family(MaskGITFamily, vq)
    for fam in (diffusion, maskgit):
        for module in fam.modules().values():
            module.eval()
    labels = [k % 10 for k in range(16)]
    contenders = {"diffusion": (diffusion, BatchRequest(seeds=list(range(16)), labels=labels))}
    for T in steps:
        contenders[f"maskgit-{T}"] = (maskgit, BatchRequest(seeds=list(range(16)), labels=labels, steps=T))
    if plain:  # MaskGIT without its sampling shortcuts, at the first step count
        contenders[f"maskgit-{steps[0]}-plain"] = (maskgit, BatchRequest(seeds=list(range(16)), labels=labels,
                                                                         steps=steps[0]))
    times: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in contenders}
    names = list(contenders)
    with torch.no_grad():
        for r in range(rounds + 1):
            for name in names[r % len(names):] + names[: r % len(names)]:
                fam, request = contenders[name]
                fam.sampling_shortcuts = not name.endswith("-plain")
                c0, t0 = time.process_time(), time.perf_counter()
                fam.generate(request)
                if r:  # round 0 warms up (kernels, allocator, oneDNN's reordered weights)
                    times[name]["cpu"].append(time.process_time() - c0)
                    times[name]["wall"].append(time.perf_counter() - t0)
            if r:
                print(f"  round {r}: " + ", ".join(f"{n} {times[n]['cpu'][-1]:.2f}s" for n in names),
                      file=sys.stderr, flush=True)
    out: dict[str, Any] = {"batch": 16, "rounds": rounds, "seconds_per_batch": {
        name: {kind: {"min": min(v), "median": statistics.median(v)} for kind, v in t.items()}
        for name, t in times.items()}}
    out["diffusion_over_maskgit"] = {
        name: {kind: statistics.median(d / m for d, m in zip(times["diffusion"][kind], times[name][kind]))
               for kind in ("cpu", "wall")}
        for name in names[1:]}
    print(f"  ratio: {out['diffusion_over_maskgit']}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, help="family_quality.py's <out>/runs (maskgit, autoregressive)")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 12, 16])
    p.add_argument("--num", type=int, default=1000, help="samples scored per MaskGIT setting (default: 1000)")
    p.add_argument("--skip-fd", action="store_true", help="speed only")
    p.add_argument("--parts", nargs="+", default=["maskgit", "autoregressive", "backbones", "sampling", "ratio"],
                   choices=["maskgit", "autoregressive", "backbones", "sampling", "ratio"])
    p.add_argument("--vq", type=Path, help="VQ-VAE run for --parts sampling and ratio (default: RUNS/vq; "
                   "ratio builds a fresh vq-small tokenizer without one)")
    p.add_argument("--ratio-steps", type=int, nargs="+", default=[10, 8, 12],
                   help="MaskGIT steps compared with diffusion in --parts ratio (default: 10 8 12)")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds of --parts ratio (default: 5)")
    p.add_argument("--plain", action="store_true", help="--parts ratio also times MaskGIT without its sampling "
                   "shortcuts (the first --ratio-steps)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "token_families.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"machine": machine_description(args.threads), "load_avg": os.getloadavg()}
    if "maskgit" in args.parts:
        result["maskgit_steps"] = maskgit_steps(args.runs / "maskgit", args.steps, args.num, args.skip_fd)
    if "autoregressive" in args.parts:
        result["autoregressive_cache"] = autoregressive_cache(args.runs / "autoregressive", args.vq or args.runs / "vq")
    if "backbones" in args.parts:
        result["backbones"] = backbone_speed()
    if "sampling" in args.parts:
        result["sampling"] = sampling_speed(args.vq or args.runs / "vq")
    if "ratio" in args.parts:
        vq = args.vq or (args.runs / "vq" if args.runs else None)
        result["sampling_ratio"] = sampling_ratio(vq, args.ratio_steps, args.rounds, args.plain)
    result["load_avg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
