"""Quality per CPU-minute: limner's diffusion family against two peers' default training recipes.

Three contestants train an unconditional model of Fashion-MNIST (Xiao et al. 2017) at 32x32x1
for the same CPU budget (default 20 minutes on 2 threads = 2,400 CPU-seconds), then draw the same
number of samples (default 1,000), which are scored against the training set with limner's
trained classifier extractor: Fréchet distance in its feature space ("FD", computed like FID,
Heusel et al. 2017, but not on Inception features), KID (Bińkowski et al. 2018) and improved
precision/recall (Kynkäänniemi et al. 2019).

- ``limner``: ``limner.workflows.train`` (what ``limner train --cond none`` runs), preset
  ``small``, stopped through ``Trainer.request_stop`` when the budget is spent. Its cosine LR
  decay needs the run's length, which a budget does not fix in steps: after every step the end
  of the decay is set to where the budget will run out at the CPU cost per step so far. EMA
  weights, the family's default sampler (DPM-Solver++(2M), 20 steps).
- ``diffusers``: the recipe of diffusers' ``examples/unconditional_image_generation/
  train_unconditional.py`` (its UNet2DModel, DDPM epsilon objective, AdamW 1e-4 with 500 warm-up
  steps and cosine decay, EMAModel with warm-up, batch 16), run as a plain loop.
- ``ddpm-pytorch``: the defaults of denoising-diffusion-pytorch's ``Trainer`` around the
  README's ``Unet(dim=64, dim_mults=(1, 2, 4, 8))`` and ``GaussianDiffusion`` (v objective,
  sigmoid schedule), run as a plain loop (Adam 1e-4, batch 16, ema-pytorch EMA, flips).

The budget is the worker process's CPU time (``time.process_time()``, all its threads), so other
load on the machine changes the wall time but not the outcome. Every contestant runs in its own
subprocess with ``torch.set_num_threads(threads)``; all train from the same in-memory uint8 array
(limner's 32 px resize of the 28 px originals), so nobody pays for image decoding. Sampling is not
part of the budget; a peer whose default sampler (1,000 DDPM steps) would cost more than
``--sample-cap-min`` CPU-minutes for the requested samples is sampled with DDIM, 50 steps, on the
same weights, and the report says so. The recipes are described in full in benchmarks/README.md.

Usage:
    python benchmarks/quality_per_cpu_minute.py                    # full run (~2 h on 2 cores)
    python benchmarks/quality_per_cpu_minute.py --quick --threads 1 # smoke run (~3-5 min)
    python benchmarks/quality_per_cpu_minute.py --contestants limner # re-run limner only; the
        # peers' samples are reused from --out when it holds a run with the same settings
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from machine import machine_description

RESOLUTION = 32  # the peers' U-Nets halve 3 (ddpm-pytorch) or 5 (diffusers) times: 28 px cannot be used
DEFAULT_DATA = Path("/work/shared/data/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "quality_per_cpu_minute"
QUICK_OUT = Path(tempfile.gettempdir()) / "limner_quality_per_cpu_minute_quick"
GRID_COUNT = 64
QUICK_SCORE_ROWS = 2000  # --quick scores against the first rows only, with a stand-in extractor
TARGET_RATIO = 0.3  # the target: limner's FD at most 0.3x the better peer's

CONTESTANTS = {
    "limner": "limner diffusion, preset small (EDM, DPM-Solver++(2M) 20 steps)",
    "diffusers": "diffusers train_unconditional.py recipe (UNet2DModel, DDPM eps)",
    "ddpm-pytorch": "denoising-diffusion-pytorch Trainer defaults (Unet dim 64, v objective)",
}
PEERS = ("diffusers", "ddpm-pytorch")
# import name -> pip name, per contestant (the check runs before any training starts)
REQUIREMENTS = {
    "limner": {},
    "diffusers": {"diffusers": "diffusers==0.42.1"},
    "ddpm-pytorch": {"denoising_diffusion_pytorch": "denoising-diffusion-pytorch==2.3.4",
                     "einops": "einops==0.8.2", "ema_pytorch": "ema-pytorch==0.8.3",
                     "accelerate": "accelerate==1.15.0", "scipy": "scipy"},
}
INSTALL_HINT = ("pip install -e '.[bench]' && pip install --no-deps denoising-diffusion-pytorch==2.3.4\n"
                "  (--no-deps: its torchvision and pytorch-fid requirements are not needed here)")


# ---------------------------------------------------------------------------------------------
# Budget, data, sampling decisions (shared by the workers)
# ---------------------------------------------------------------------------------------------


class CpuBudget:
    """CPU seconds of this process (all threads) since ``start``, against a limit."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.cpu0 = time.process_time()
        self.wall0 = time.perf_counter()

    def spent(self) -> float:
        return time.process_time() - self.cpu0

    def wall(self) -> float:
        return time.perf_counter() - self.wall0

    def exhausted(self) -> bool:
        return self.spent() >= self.seconds


class Progress:
    """A line on stderr every ``every`` CPU-seconds: steps, CPU spent, loss."""

    def __init__(self, name: str, budget: CpuBudget, every: float = 60.0):
        self.name, self.budget, self.every = name, budget, every
        self.next = every
        self.losses: list[float] = []

    def step(self, step: int, loss: float) -> None:
        self.losses.append(loss)
        spent = self.budget.spent()
        if spent >= self.next:
            self.next = spent + self.every
            print(f"  {self.name}: step {step}, {spent:.0f}/{self.budget.seconds:.0f} CPU-s, "
                  f"loss {self.recent_loss():.4f}", file=sys.stderr, flush=True)

    def recent_loss(self, n: int = 50) -> float:
        tail = self.losses[-n:]
        return sum(tail) / len(tail) if tail else float("nan")


def load_images(data: Path, limit: int | None = None, cache_dir: Path | None = None):
    """Fashion-MNIST train split as limner loads it: uint8 [N, 32, 32, 1] (28 px -> 32 px bicubic)."""
    from limner.data.dataset import load_dataset

    return load_dataset(data, RESOLUTION, limit=limit, cache_dir=cache_dir, progress=False)


def shuffled_batches(n: int, batch_size: int, seed: int) -> Iterator[Any]:
    """Index batches of a fresh permutation every epoch (a DataLoader with shuffle=True)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=g)
        yield from order.split(batch_size)


def unit_images(images_nchw: Any, idx: Any) -> Any:
    """uint8 rows -> float in [0, 1] (torchvision's ToTensor)."""
    return images_nchw[idx].float() / 255


def to_uint8(x01: Any) -> Any:
    """float images in [0, 1] -> uint8 (round half up, as the peers' PIL conversion does)."""
    return (x01.clamp(0, 1) * 255).round().to(dtype=__import__("torch").uint8)


@dataclass
class SamplerChoice:
    """Which sampler a contestant uses and why."""

    name: str
    steps: int
    nfe: int
    projected_default_cpu_s: float | None = None
    reason: str = "the recipe's default"


def choose_sampler(default: tuple[str, int], fallback: tuple[str, int], nfe_cpu_s: float, batches: int,
                   cap_cpu_s: float, override_steps: int | None) -> SamplerChoice:
    """The recipe's own sampler unless it would cost more than ``cap_cpu_s``; then the fallback.

    Steps equal NFE for all the samplers used here (DDPM, DDIM, DPM-Solver++(2M)).
    """
    if override_steps:
        return SamplerChoice(fallback[0], override_steps, override_steps, None, "--sample-steps override")
    projected = nfe_cpu_s * default[1] * batches
    if projected <= cap_cpu_s:
        return SamplerChoice(default[0], default[1], default[1], projected)
    return SamplerChoice(fallback[0], fallback[1], fallback[1], projected,
                         f"{default[0]} x{default[1]} projected at {projected / 60:.0f} CPU-min > cap "
                         f"{cap_cpu_s / 60:.0f}; same weights, {fallback[0]} x{fallback[1]}")


def time_nfe(net_eval: Callable[[], Any]) -> float:
    """CPU seconds of one network evaluation (after one warm-up call)."""
    import torch

    with torch.inference_mode():
        net_eval()
        t0 = time.process_time()
        net_eval()
    return time.process_time() - t0


def sample_batches(num: int, batch: int, seed: int) -> list[list[int]]:
    """Seeds seed..seed+num-1 in batches."""
    return [list(range(seed + a, seed + min(a + batch, num))) for a in range(0, num, batch)]


# ---------------------------------------------------------------------------------------------
# limner
# ---------------------------------------------------------------------------------------------


def budget_callback(budget: CpuBudget, progress: Progress, fit_schedule: bool = False):
    """A trainer callback asking the trainer to save and stop once the CPU budget is spent.

    With ``fit_schedule``, after every step it also sets the end of the LR schedules' decay to
    the step at which the budget will run out at the average CPU cost per step so far, so a
    decaying schedule reaches its floor when the budget does (whatever the machine's speed).
    """
    from limner.training.callbacks import Callback

    from budget import ScheduleFit

    class StopWhenSpent(Callback):
        def on_train_start(self, trainer):
            self.fit = ScheduleFit()

        def on_step_end(self, trainer, step, metrics):
            progress.step(step, float(metrics.get("loss", float("nan"))))
            if budget.exhausted():
                trainer.request_stop()
            elif fit_schedule:
                self.fit.update(trainer, step, budget.spent(), budget.seconds)

    return StopWhenSpent()


def run_limner(args: argparse.Namespace, work: Path) -> dict:
    """Train with limner's workflow until the budget is spent, then sample with its defaults.

    With ``--limner-lr-decay`` other than none, the schedule's end follows the budget: see
    :func:`budget_callback`.
    """
    import torch

    from limner.evaluation.evaluate import EvalOptions, sample_for_eval
    from limner.generation.pipeline import load_run
    from limner.training.signals import TrainingInterrupted
    from limner.workflows import TrainOptions, train

    budget = CpuBudget(args.budget_cpu_s)
    recipe = {"sample_every": 0, "precision": args.limner_precision,  # no preview grids: the peers draw none
              "lr_decay": args.limner_lr_decay}
    if args.limner_batch_size:
        recipe["batch_size"] = args.limner_batch_size
    run_dir = work / "limner_run"
    family = {"overrides": {"P_mean": args.limner_p_mean}} if args.limner_p_mean is not None else {}
    opts = TrainOptions(data=args.data, out=run_dir, preset=args.limner_preset, resolution=RESOLUTION,
                        cond="none", progress=False, overwrite=True, train={"steps": 10**9, **recipe},
                        family_options=family)
    progress = Progress("limner", budget)
    opts.callbacks.append(budget_callback(budget, progress, fit_schedule=args.limner_lr_decay != "none"))
    try:
        train(opts)
        raise RuntimeError("limner trained 10**9 steps without spending the budget")
    except TrainingInterrupted as stop:
        steps = stop.step
    train_cpu, train_wall = budget.spent(), budget.wall()
    loaded = load_run(run_dir)  # the checkpoint written at the stop, EMA weights
    family, data = loaded.family, load_images(args.data)
    cfg = family.config
    batch = min(args.sample_batch, args.num_samples)
    x = torch.randn(batch, cfg.channels, RESOLUTION, RESOLUTION)
    nfe_s = time_nfe(lambda: family.model(x, torch.full((batch,), 1.0), _empty_cond(batch)))
    choice = choose_sampler((cfg.sampler, cfg.steps), (cfg.sampler, cfg.steps), nfe_s,
                            math.ceil(args.num_samples / batch), args.sample_cap_cpu_s, args.sample_steps)
    cpu0 = time.process_time()
    samples = sample_for_eval(family, data, EvalOptions(num=args.num_samples, batch_size=batch, seed=args.seed,
                                                        steps=choice.steps), progress=False)
    train_cfg = loaded.run_config["train"]
    return {
        "steps": steps, "batch_size": train_cfg["batch_size"], "images_seen": steps * train_cfg["batch_size"],
        "train_cpu_s": train_cpu, "train_wall_s": train_wall, "loss": progress.recent_loss(),
        "params": sum(p.numel() for p in family.model.parameters()),
        "sampler": choice, "nfe_cpu_s": nfe_s, "sample_cpu_s": time.process_time() - cpu0,
        "sample_wall_s": samples.seconds, "images": samples.images,
        "recipe": {"preset": args.limner_preset, "train": train_cfg, "family": loaded.run_config["family"]["config"]},
    }


def _empty_cond(batch: int) -> Any:
    from limner.conditioning.base import Conditioning

    return Conditioning.empty(batch)


# ---------------------------------------------------------------------------------------------
# diffusers: examples/unconditional_image_generation/train_unconditional.py, default arguments
# ---------------------------------------------------------------------------------------------

DIFFUSERS_RECIPE = {
    "model": "UNet2DModel, block_out_channels (128, 128, 256, 256, 512, 512), layers_per_block 2, "
             "AttnDownBlock2D 5th of 6 / AttnUpBlock2D 2nd of 6 (the example's definition, unchanged)",
    "scheduler": "DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear', prediction_type='epsilon')",
    "optimizer": "AdamW(lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)",
    "lr_schedule": "cosine, 500 warm-up steps, decay over 100 epochs of batch 16 (375,000 steps)",
    "ema": "EMAModel(decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3/4) (--use_ema)",
    "batch_size": 16, "grad_clip": 1.0, "random_flip": False, "mixed_precision": "no",
    "sampler": "DDPMPipeline, 1000 steps (ddpm_num_inference_steps)",
}
DIFFUSERS_EPOCHS = 100


def diffusers_unet(channels: int) -> Any:
    """The example's UNet2DModel at 32 px (it halves 5 times: 32 -> 1; attention at 2x2)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=RESOLUTION, in_channels=channels, out_channels=channels, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                          "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


def run_diffusers(args: argparse.Namespace, work: Path) -> dict:
    """The example's training loop (epsilon MSE on DDPM-noised images) until the budget is spent."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    data = load_images(args.data)
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous()  # [N, C, H, W] uint8
    budget = CpuBudget(args.budget_cpu_s)
    torch.manual_seed(args.seed)
    model = diffusers_unet(data.channels)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    batch = 16
    lr_schedule = get_scheduler("cosine", optimizer=opt, num_warmup_steps=500,
                                num_training_steps=math.ceil(len(images) / batch) * DIFFUSERS_EPOCHS)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    progress, steps = Progress("diffusers", budget), 0
    model.train()
    for idx in shuffled_batches(len(images), batch, args.seed):
        clean = unit_images(images, idx) * 2 - 1  # Normalize([0.5], [0.5])
        noise = torch.randn_like(clean)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),)).long()
        pred = model(noise_scheduler.add_noise(clean, noise, t), t).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_schedule.step()
        opt.zero_grad()
        ema.step(model.parameters())
        steps += 1
        progress.step(steps, loss.item())
        if budget.exhausted():
            break
    train_cpu, train_wall = budget.spent(), budget.wall()
    ema.copy_to(model.parameters())
    model.eval()
    return {"steps": steps, "batch_size": batch, "images_seen": steps * batch, "train_cpu_s": train_cpu,
            "train_wall_s": train_wall, "loss": progress.recent_loss(),
            "params": sum(p.numel() for p in model.parameters()), "recipe": DIFFUSERS_RECIPE,
            **sample_diffusers(model, noise_scheduler, args)}


def sample_diffusers(model: Any, noise_scheduler: Any, args: argparse.Namespace) -> dict:
    """DDPMPipeline with 1000 steps, or DDIMPipeline (eta 0) when that would cost too much."""
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline

    batch = min(args.sample_batch, args.num_samples)
    x = torch.randn(batch, model.config.in_channels, RESOLUTION, RESOLUTION)
    nfe_s = time_nfe(lambda: model(x, torch.full((batch,), 500)))
    choice = choose_sampler(("ddpm", 1000), ("ddim", 50), nfe_s, math.ceil(args.num_samples / batch),
                            args.sample_cap_cpu_s, args.sample_steps)
    if choice.name == "ddpm":
        pipe, kwargs = DDPMPipeline(unet=model, scheduler=noise_scheduler), {}
    else:
        ddim = DDIMScheduler.from_config(noise_scheduler.config)
        pipe, kwargs = DDIMPipeline(unet=model, scheduler=ddim), {"eta": 0.0}
    pipe.set_progress_bar_config(disable=True)
    cpu0, wall0, chunks = time.process_time(), time.perf_counter(), []
    for seeds in sample_batches(args.num_samples, batch, args.seed):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out = pipe(batch_size=len(seeds), generator=gens, num_inference_steps=choice.steps,
                   output_type="np", **kwargs).images  # float [B, H, W, C] in [0, 1]
        chunks.append(to_uint8(torch.from_numpy(out).permute(0, 3, 1, 2)))
    return {"sampler": choice, "nfe_cpu_s": nfe_s, "sample_cpu_s": time.process_time() - cpu0,
            "sample_wall_s": time.perf_counter() - wall0, "images": torch.cat(chunks)}


# ---------------------------------------------------------------------------------------------
# denoising-diffusion-pytorch: Trainer defaults around the README's Unet and GaussianDiffusion
# ---------------------------------------------------------------------------------------------

DDPM_PYTORCH_RECIPE = {
    "model": "Unet(dim=64, dim_mults=(1, 2, 4, 8), channels=1) (README), other arguments default",
    "diffusion": "GaussianDiffusion(image_size=32, timesteps=1000): objective pred_v, sigmoid schedule, "
                 "min-SNR off, offset noise off (defaults)",
    "optimizer": "Adam(lr=1e-4, betas=(0.9, 0.99))", "lr_schedule": "constant",
    "ema": "ema_pytorch.EMA(beta=0.995, update_every=10) (update_after_step 100, power 2/3: EMA defaults)",
    "batch_size": 16, "grad_clip": 1.0, "random_flip": True, "amp": False,
    "sampler": "GaussianDiffusion.sample: DDPM, 1000 steps (sampling_timesteps=None)",
}


def import_ddpm_pytorch() -> Any:
    """``denoising_diffusion_pytorch`` with a stand-in ``torchvision`` when that is not installed.

    The package imports ``torchvision.transforms`` and ``torchvision.utils`` at the top of its
    main module but uses them only in its folder ``Dataset`` and its ``Trainer``'s sample grids,
    neither of which runs here; the stand-in only satisfies the import. Only this worker process
    sees it (diffusers, in another process, probes for torchvision and would trip over it).
    """
    import importlib.machinery
    import types

    if importlib.util.find_spec("torchvision") is None:
        for name in ("torchvision", "torchvision.transforms", "torchvision.utils"):
            module = types.ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = module
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]  # type: ignore[attr-defined]
        sys.modules["torchvision"].utils = sys.modules["torchvision.utils"]  # type: ignore[attr-defined]
    import functools

    import denoising_diffusion_pytorch
    import denoising_diffusion_pytorch.denoising_diffusion_pytorch as main_module

    # its samplers draw a tqdm bar per batch; the benchmark prints its own progress lines
    main_module.tqdm = functools.partial(main_module.tqdm, disable=True)
    return denoising_diffusion_pytorch


def run_ddpm_pytorch(args: argparse.Namespace, work: Path) -> dict:
    """``Trainer.train``'s step (loss, clip 1.0, Adam, EMA) until the budget is spent."""
    import torch
    from ema_pytorch import EMA

    ddp = import_ddpm_pytorch()
    data = load_images(args.data)
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous()
    budget = CpuBudget(args.budget_cpu_s)
    torch.manual_seed(args.seed)
    unet = ddp.Unet(dim=64, dim_mults=(1, 2, 4, 8), channels=data.channels)
    diffusion = ddp.GaussianDiffusion(unet, image_size=RESOLUTION, timesteps=1000)
    opt = torch.optim.Adam(diffusion.parameters(), lr=1e-4, betas=(0.9, 0.99))
    ema = EMA(diffusion, beta=0.995, update_every=10)
    batch, steps, progress = 16, 0, Progress("ddpm-pytorch", budget)
    diffusion.train()
    for idx in shuffled_batches(len(images), batch, args.seed):
        x = unit_images(images, idx)  # the Trainer feeds [0, 1]; GaussianDiffusion maps to [-1, 1]
        flip = torch.rand(len(idx)) < 0.5  # Trainer default augment_horizontal_flip=True
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = diffusion(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.update()
        steps += 1
        progress.step(steps, loss.item())
        if budget.exhausted():
            break
    train_cpu, train_wall = budget.spent(), budget.wall()
    return {"steps": steps, "batch_size": batch, "images_seen": steps * batch, "train_cpu_s": train_cpu,
            "train_wall_s": train_wall, "loss": progress.recent_loss(),
            "params": sum(p.numel() for p in unet.parameters()), "recipe": DDPM_PYTORCH_RECIPE,
            **sample_ddpm_pytorch(ddp, ema.ema_model, args)}


def sample_ddpm_pytorch(ddp: Any, ema_diffusion: Any, args: argparse.Namespace) -> dict:
    """``sample()`` of the EMA model: DDPM 1000 steps, or DDIM (eta 0) via ``sampling_timesteps``."""
    import torch

    net = ema_diffusion.model.eval()
    batch = min(args.sample_batch, args.num_samples)
    x = torch.randn(batch, net.channels, RESOLUTION, RESOLUTION)
    nfe_s = time_nfe(lambda: net(x, torch.full((batch,), 500)))
    choice = choose_sampler(("ddpm", 1000), ("ddim", 50), nfe_s, math.ceil(args.num_samples / batch),
                            args.sample_cap_cpu_s, args.sample_steps)
    # A second wrapper around the same EMA network; the schedule buffers are recomputed identically.
    sampler = ddp.GaussianDiffusion(net, image_size=RESOLUTION, timesteps=1000,
                                    sampling_timesteps=None if choice.name == "ddpm" else choice.steps).eval()
    cpu0, wall0, chunks = time.process_time(), time.perf_counter(), []
    for seeds in sample_batches(args.num_samples, batch, args.seed):
        torch.manual_seed(seeds[0])  # sample() draws from the global generator
        with torch.inference_mode():
            chunks.append(to_uint8(sampler.sample(batch_size=len(seeds))))  # [0, 1] after unnormalize
    return {"sampler": choice, "nfe_cpu_s": nfe_s, "sample_cpu_s": time.process_time() - cpu0,
            "sample_wall_s": time.perf_counter() - wall0, "images": torch.cat(chunks)}


RUNNERS: dict[str, Callable[[argparse.Namespace, Path], dict]] = {
    "limner": run_limner, "diffusers": run_diffusers, "ddpm-pytorch": run_ddpm_pytorch,
}


def run_worker(args: argparse.Namespace) -> None:
    """One contestant: train, sample, write samples (.npy) and a JSON summary into the work dir."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    name, work = args.worker, args.work_dir
    out = RUNNERS[name](args, work)
    images = out.pop("images")
    np.save(work / f"{name}_samples.npy", images.numpy())
    choice: SamplerChoice = out.pop("sampler")
    summary = {"name": name, "threads": torch.get_num_threads(), "sampler": choice.__dict__, **out,
               "versions": peer_versions(name)}
    (work / f"{name}.json").write_text(json.dumps(summary, indent=1, default=str))


def peer_versions(name: str) -> dict[str, str]:
    from importlib.metadata import version

    import torch

    import limner

    out = {"torch": torch.__version__, "limner": limner.__version__}
    for spec in REQUIREMENTS[name].values():
        dist = spec.split("==")[0]
        out[dist] = version(dist)
    return out


# ---------------------------------------------------------------------------------------------
# Parent: run the workers, score, write the report
# ---------------------------------------------------------------------------------------------


def check_requirements(names: list[str]) -> None:
    """Exit with a clear message before anything runs when a peer's package is missing."""
    missing = [(name, spec) for name in names for module, spec in REQUIREMENTS[name].items()
               if importlib.util.find_spec(module) is None]
    if missing:
        lines = "\n".join(f"  {name}: {spec}" for name, spec in missing)
        sys.exit(f"error: packages needed by the contestants are missing:\n{lines}\n"
                 f"install them with\n  {INSTALL_HINT}")


def run_contestant(name: str, args: argparse.Namespace, work: Path) -> dict:
    """Run one worker subprocess; its summary JSON plus the path of its samples."""
    cmd = [sys.executable, __file__, "--worker", name, "--work-dir", str(work), "--data", str(args.data),
           "--budget-min", str(args.budget_min), "--threads", str(args.threads), "--num-samples",
           str(args.num_samples), "--sample-batch", str(args.sample_batch), "--sample-cap-min",
           str(args.sample_cap_min), "--seed", str(args.seed), "--limner-preset", args.limner_preset,
           "--limner-precision", args.limner_precision, "--limner-lr-decay", args.limner_lr_decay]
    if args.limner_batch_size:
        cmd += ["--limner-batch-size", str(args.limner_batch_size)]
    if args.limner_p_mean is not None:
        cmd += ["--limner-p-mean", str(args.limner_p_mean)]
    if args.sample_steps:
        cmd += ["--sample-steps", str(args.sample_steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    print(f"[{name}] training for {args.budget_cpu_s:.0f} CPU-s on {args.threads} thread(s) ...",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        sys.exit(f"error: the {name} worker failed with exit code {proc.returncode} (its output is above)")
    summary = json.loads((work / f"{name}.json").read_text())
    summary["samples_path"] = str(work / f"{name}_samples.npy")
    summary["worker_wall_s"] = time.perf_counter() - t0
    print(f"[{name}] {summary['steps']} steps in {summary['train_cpu_s']:.0f} CPU-s "
          f"({summary['train_wall_s']:.0f} s wall); sampled {args.num_samples} with "
          f"{summary['sampler']['name']} x{summary['sampler']['steps']} in {summary['sample_wall_s']:.0f} s",
          file=sys.stderr, flush=True)
    return summary


def scoring_setup(args: argparse.Namespace, work: Path) -> tuple[Any, Any, Path | None]:
    """(dataset, extractor, cache dir): limner's default classifier extractor, or a stand-in for --quick."""
    from limner.evaluation.evaluate import resolve_extractor
    from limner.evaluation.trained import load_extractor, train_extractor

    if not args.quick:
        dataset = load_images(args.data)
        extractor, _ = resolve_extractor(args.extractor, dataset)
        return dataset, extractor, None
    dataset = load_images(args.data, limit=QUICK_SCORE_ROWS, cache_dir=work)
    folder = args.extractor or train_extractor(dataset, work / "extractor", kind="classifier", steps=20,
                                               batch_size=64, progress=False)
    return dataset, load_extractor(folder), work


def score(results: list[dict], args: argparse.Namespace, work: Path) -> None:
    """FD, KID, precision and recall of every contestant's samples (added to its summary)."""
    import numpy as np
    import torch

    from limner.evaluation.evaluate import EvalOptions, EvalSamples, score_samples

    dataset, extractor, cache_dir = scoring_setup(args, work)
    opts = EvalOptions(num=args.num_samples, seed=args.seed, kid_subset_size=min(1000, args.num_samples))
    for res in results:
        images = torch.from_numpy(np.load(res["samples_path"]))
        evaluation = score_samples(EvalSamples(images, seconds=res["sample_wall_s"]), dataset, extractor, opts,
                                   cache_dir=cache_dir)
        res["metrics"] = evaluation.result["metrics"]
        res["extractor"] = evaluation.result["extractor"]
        res["reference"] = evaluation.result["reference"]
    peers = [r["metrics"]["fid"] for r in results if r["name"] in PEERS]
    for res in results:
        res["fd_ratio_vs_best_peer"] = res["metrics"]["fid"] / min(peers) if peers else None


COMPARABLE = ("data", "resolution", "budget_cpu_s", "threads", "num_samples", "seed", "quick")


def reused_contestants(args: argparse.Namespace, work: Path) -> list[dict]:
    """Contestants not run this time, taken from the previous results in ``--out`` (their
    samples are re-scored) when that run had the same budget, threads, sample count and seed."""
    import numpy as np

    previous = args.out / "results.json"
    if set(args.contestants) == set(CONTESTANTS) or not previous.is_file():
        return []
    report = json.loads(previous.read_text())
    now = settings(args)
    if any(report["settings"].get(k) != now[k] for k in COMPARABLE):
        print(f"note: {previous} has other settings; contestants not run are left out",
              file=sys.stderr, flush=True)
        return []
    reused = []
    for res in report["contestants"]:
        npz = args.out / f"samples_{res['name']}.npz"
        if res["name"] in args.contestants or not npz.is_file():
            continue
        res["samples_path"] = str(work / f"{res['name']}_samples.npy")
        np.save(res["samples_path"], np.load(npz)["images"])
        res["reused_from"] = report.get("machine", "") + " (earlier run, same settings)"
        reused.append(res)
        print(f"[{res['name']}] reused from {previous}", file=sys.stderr, flush=True)
    return reused


def write_outputs(results: list[dict], args: argparse.Namespace, machine: str) -> None:
    """Per-contestant grids, the side-by-side picture, samples (.npz) and results.json."""
    import numpy as np

    from limner.visualization.grids import save_grid

    args.out.mkdir(parents=True, exist_ok=True)
    grids = []
    for res in results:
        images = np.load(res["samples_path"])
        np.savez_compressed(args.out / f"samples_{res['name']}.npz", images=images)
        path = save_grid(args.out / f"grid_{res['name']}.png", images[:GRID_COUNT], nrow=8)
        grids.append((res, images))
        res["grid"] = path.name
        res.pop("samples_path")
    side_by_side(grids, args.out / "side_by_side.png")
    report = {"machine": machine, "settings": settings(args), "contestants": results}
    (args.out / "results.json").write_text(json.dumps(report, indent=1, default=str))


def side_by_side(grids: list[tuple[dict, Any]], path: Path, gap: int = 24) -> None:
    """The grids in a row, each with its contestant above and its FD, KID and steps below."""
    from PIL import Image, ImageDraw, ImageFont

    from limner.visualization.grids import make_grid

    font = ImageFont.load_default(size=20)
    tiles = [make_grid(images[:GRID_COUNT], nrow=8, scale=2) for _, images in grids]
    w, h = max(t.width for t in tiles), max(t.height for t in tiles)
    canvas = Image.new("RGB", (len(tiles) * w + (len(tiles) + 1) * gap, h + 110), "white")
    draw = ImageDraw.Draw(canvas)
    for i, ((res, _), tile) in enumerate(zip(grids, tiles)):
        x = gap + i * (w + gap)
        m = res["metrics"]
        draw.text((x, 10), res["name"], fill="black", font=font)
        canvas.paste(tile, (x, 40))
        draw.text((x, h + 48), f"FD {m['fid']:.2f}   KID {m['kid']:.4f}", fill="black", font=font)
        draw.text((x, h + 76), f"{res['steps']} steps, {res['train_cpu_s'] / 60:.1f} CPU-min, "
                               f"{res['sampler']['name']} x{res['sampler']['steps']}", fill="black", font=font)
    canvas.save(path)


def settings(args: argparse.Namespace) -> dict:
    keys = ("budget_min", "threads", "num_samples", "sample_batch", "sample_cap_min", "sample_steps", "seed",
            "quick", "limner_preset", "limner_precision", "limner_lr_decay", "limner_batch_size",
            "limner_p_mean")
    return {"data": str(args.data), "resolution": RESOLUTION, "budget_cpu_s": args.budget_cpu_s,
            **{k: getattr(args, k) for k in keys}}


def print_table(results: list[dict], machine: str) -> None:
    """The markdown table of the README."""
    print(f"\nmachine: {machine}\n")
    print("| contestant | params | steps | images seen | CPU-min | wall-min | sampler / NFE | sampling s "
          "| FD (limner-classifier) | KID | precision | recall | FD / better peer |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        m, s = r["metrics"], r["sampler"]
        ratio = f"{r['fd_ratio_vs_best_peer']:.2f}" if r["fd_ratio_vs_best_peer"] is not None else "-"
        print(f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['steps']:,} | {r['images_seen']:,} "
              f"| {r['train_cpu_s'] / 60:.1f} | {r['train_wall_s'] / 60:.1f} | {s['name']} / {s['nfe']} "
              f"| {r['sample_wall_s']:.0f} | {m['fid']:.2f} | {m['kid']:.4f} ± {m['kid_std']:.4f} "
              f"| {m['precision']:.3f} | {m['recall']:.3f} | {ratio} |")
    reasons = {f"{r['name']}: {r['sampler']['reason']}" for r in results
               if r["sampler"]["reason"] != "the recipe's default"}
    if reasons:
        print("\nsampler not the recipe's default:\n  " + "\n  ".join(sorted(reasons)))
    limner = next((r for r in results if r["name"] == "limner"), None)
    if limner and limner["fd_ratio_vs_best_peer"] is not None:
        ok = "met" if limner["fd_ratio_vs_best_peer"] <= TARGET_RATIO else "NOT met"
        print(f"\ntarget FD ratio <= {TARGET_RATIO}: {ok} ({limner['fd_ratio_vs_best_peer']:.2f})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-min", type=float, default=20.0, help="training budget per contestant, in minutes "
                   "of --threads threads (CPU seconds = threads x minutes x 60)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per contestant")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per contestant for the metrics")
    p.add_argument("--contestants", nargs="+", default=list(CONTESTANTS), choices=list(CONTESTANTS),
                   help="contestants to run; the others are reused from --out when its results.json "
                        "has the same budget, threads, sample count and seed (default: all)")
    p.add_argument("--quick", action="store_true", help="smoke run: 0.3 min budget, 64 samples of 3 steps, "
                   f"a stand-in extractor on {QUICK_SCORE_ROWS} images; output under {QUICK_OUT}")
    p.add_argument("--out", type=Path, default=None, help=f"results folder (default {DEFAULT_OUT})")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Fashion-MNIST folder (IDX files)")
    p.add_argument("--extractor", default=None, help="extractor folder (default: limner's auto-trained "
                   "classifier for the dataset, cached)")
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument("--sample-cap-min", type=float, default=60.0, help="CPU-minutes above which a peer's "
                   "default sampler (1000 DDPM steps) is replaced by DDIM 50 steps")
    p.add_argument("--sample-steps", type=int, default=None, help="force this many sampling steps for all "
                   "(DDIM for the peers, limner's default sampler); for smoke runs")
    p.add_argument("--limner-preset", default="small")
    p.add_argument("--limner-precision", default="fp32", choices=["fp32", "bf16"],
                   help="limner's training precision (bf16 = autocast; default fp32, as the peers)")
    p.add_argument("--limner-batch-size", type=int, default=None, help="limner's batch size (default: the preset's)")
    p.add_argument("--limner-p-mean", type=float, default=None,
                   help="limner's EDM P_mean, the mean log-sigma of training noise (default: the family's)")
    p.add_argument("--limner-lr-decay", default=None, choices=["none", "cosine", "linear"],
                   help="limner's LR decay, fitted to end with the budget (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder (runs, samples)")
    p.add_argument("--worker", choices=list(CONTESTANTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.budget_min, args.num_samples = min(args.budget_min, 0.3), min(args.num_samples, 64)
        args.sample_steps = args.sample_steps or 3
    args.out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    args.budget_cpu_s = args.threads * args.budget_min * 60
    if args.limner_lr_decay is None:
        from limner.models.diffusion.family import DiffusionFamily

        args.limner_lr_decay = DiffusionFamily.train_defaults(args.limner_preset).get("lr_decay", "none")
    args.sample_cap_cpu_s = args.sample_cap_min * 60
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    check_requirements(args.contestants)
    import torch

    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="limner_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = [run_contestant(name, args, work) for name in args.contestants]
        results += reused_contestants(args, work)
        results.sort(key=lambda r: list(CONTESTANTS).index(r["name"]))
        print("scoring ...", file=sys.stderr, flush=True)
        score(results, args, work)
        machine = machine_description(args.threads, f"Python {platform.python_version()}")
        write_outputs(results, args, machine)
        print_table(results, machine)
        print(f"\nwritten to {args.out}")
    finally:
        if not args.keep_work and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
