"""Tiny model families and data for the trainer tests (a few hundred parameters, 8x8 images).

Importable both as part of the test package and, by path, from the subprocess scripts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from limner.generation.request import BatchRequest
from limner.models.base import GenerationOutput, OptimizerSpec


@dataclass
class ToyData:
    """Random uint8 images [N, 8, 8, 3] with captions and labels."""

    images: np.ndarray
    captions: list[str] | None
    labels: np.ndarray | None


def toy_data(n: int = 24, size: int = 8, channels: int = 3, seed: int = 0) -> ToyData:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    labels = np.arange(n) % 3
    return ToyData(images, [f"image {i}" for i in range(n)], labels)


class ToyDenoiser(nn.Module):
    def __init__(self, channels: int = 3, width: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, channels, 3, padding=1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        return self.conv2(F.silu(self.conv1(x)))


class ToyFamily:
    """A 2-layer conv denoiser with an MSE loss on noise drawn from ``ctx.generator()``."""

    name: ClassVar[str] = "toy"

    def __init__(self, channels: int = 3, width: int = 4, seed: int = 0, nan_at: int | None = None,
                 nan_steps: int = 1):
        torch.manual_seed(seed)
        self.net = ToyDenoiser(channels, width)
        self.nan_at = nan_at
        self.nan_steps = nan_steps
        self.seen: list[int] = []
        self.counter = 0

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.net}

    def ema_names(self) -> list[str]:
        return ["model"]

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"model": OptimizerSpec(self.net.parameters())}

    def config_dict(self) -> dict[str, Any]:
        return {"channels": self.net.conv1.in_channels, "width": self.net.conv1.out_channels}

    def _poisoned(self, step: int) -> bool:
        return self.nan_at is not None and self.nan_at <= step + 1 < self.nan_at + self.nan_steps

    def train_step(self, batch, ctx) -> dict[str, float]:
        self.seen.extend(batch.indices.tolist())
        total = 0.0
        for micro in ctx.micro_batches(batch):
            x = micro.images
            noise = torch.randn(x.shape, generator=ctx.generator(), device=x.device)
            sigma = torch.rand(x.shape[0], 1, 1, 1, generator=ctx.generator(), device=x.device)
            with ctx.autocast():
                pred = ctx.net("model")(x + sigma * noise)
                loss = F.mse_loss(pred.float(), x)
            if self._poisoned(ctx.step):
                loss = loss * float("nan")
            ctx.backward(loss, "model")
            total += float(loss.detach()) / ctx.trainer.config.grad_accum
        ctx.optimizer_step("model")
        self.counter += 1
        return {"loss": total}

    def extra_state(self) -> dict[str, Any]:
        return {"counter": self.counter, "probe": torch.tensor([1.5, 2.5])}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.counter = int(state["counter"])

    @torch.no_grad()
    def generate(self, request: BatchRequest, *, callback=None) -> GenerationOutput:
        images = []
        for seed in request.seeds:
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(1, self.net.conv1.in_channels, 8, 8, generator=g)
            images.append(self.net(x))
        out = torch.cat(images).clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
        return GenerationOutput(images=out, seeds=list(request.seeds))


class ToyGAN:
    """Two networks and two optimizers, alternating D and G inside one step like a GAN."""

    name: ClassVar[str] = "toygan"

    def __init__(self, channels: int = 3, seed: int = 0):
        torch.manual_seed(seed)
        self.G = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.SiLU(),
                               nn.Conv2d(4, channels, 3, padding=1), nn.Tanh())
        self.D = nn.Sequential(nn.Conv2d(channels, 4, 3, stride=2, padding=1), nn.SiLU(),
                               nn.Flatten(), nn.Linear(4 * 4 * 4, 1))
        self.d_steps = 0

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def ema_names(self) -> list[str]:
        return ["G"]

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"D": OptimizerSpec(self.D.parameters(), lr=1e-3),
                "G": OptimizerSpec(self.G.parameters())}

    def config_dict(self) -> dict[str, Any]:
        return {"channels": self.G[0].in_channels}

    def train_step(self, batch, ctx) -> dict[str, float]:
        out = {"loss_D": 0.0, "loss_G": 0.0}
        n = ctx.trainer.config.grad_accum
        self.D.requires_grad_(True)
        for micro in ctx.micro_batches(batch):  # D step
            z = torch.randn(micro.images.shape, generator=ctx.generator(), device=micro.images.device)
            with torch.no_grad():
                fake = self.G(z)
            loss = (F.softplus(ctx.net("D")(fake)) + F.softplus(-ctx.net("D")(micro.images))).mean()
            ctx.backward(loss, "D")
            out["loss_D"] += float(loss.detach()) / n
        ctx.optimizer_step("D")
        self.D.requires_grad_(False)
        for micro in ctx.micro_batches(batch):  # G step
            z = torch.randn(micro.images.shape, generator=ctx.generator(), device=micro.images.device)
            loss = F.softplus(-self.D(ctx.net("G")(z))).mean()
            ctx.backward(loss, "G")
            out["loss_G"] += float(loss.detach()) / n
        ctx.optimizer_step("G")
        self.D.requires_grad_(True)
        self.d_steps += 1
        out["loss"] = out["loss_D"] + out["loss_G"]
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"d_steps": self.d_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.d_steps = int(state["d_steps"])

    @torch.no_grad()
    def generate(self, request: BatchRequest, *, callback=None) -> GenerationOutput:
        z = torch.cat([torch.randn(1, self.G[0].in_channels, 8, 8,
                                   generator=torch.Generator().manual_seed(s)) for s in request.seeds])
        out = self.G(z).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
        return GenerationOutput(images=out, seeds=list(request.seeds))


# ---------------------------------------------------------------------------------------------
# Helpers shared by the tests and the subprocess scripts
# ---------------------------------------------------------------------------------------------


def small_config(**overrides: Any):
    """A fast TrainConfig for 8x8 toy runs."""
    from limner.training.config import TrainConfig

    base = dict(steps=12, batch_size=8, lr=1e-2, warmup_steps=3, log_every=2, save_every=4,
                sample_every=0, keep_last=10, tensorboard=False, ema_decay=0.9)
    base.update(overrides)
    return TrainConfig(**base)


def run_config_for(family) -> dict[str, Any]:
    return {"family": {"name": family.name, "config": family.config_dict()},
            "data": {"num_images": 24}}


def make_trainer(run_dir, family=None, data=None, *, resume: bool = False, callbacks=(),
                 progress: bool = False, **overrides: Any):
    from limner.training.trainer import Trainer

    family = family if family is not None else ToyFamily()
    data = data if data is not None else toy_data()
    return Trainer(family, data, small_config(**overrides), run_dir,
                   run_config=run_config_for(family), callbacks=callbacks, progress=progress,
                   resume=resume)


def checkpoint_contents(ckpt_dir) -> dict[str, Any]:
    """Every tensor and value of a checkpoint (weights, EMA, state) for equality checks."""
    from pathlib import Path

    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    out: dict[str, Any] = {p.name: load_file(str(p)) for p in sorted(ckpt_dir.glob("*.safetensors"))}
    out["state.pt"] = torch.load(ckpt_dir / "state.pt", weights_only=True)
    return out


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Recursive bitwise equality of nested dicts/lists/tensors/values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"keys differ at {where}: {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
