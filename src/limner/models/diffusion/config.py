"""Configuration of the pixel-space diffusion family and its named presets.

A preset names a model size plus the training recipe that suits it, so ``--preset small``
reproduces a run by name (EDM2 ``config_presets``, DiT's model registry). Everything resolved
for a run (including the text vocabulary) is saved in the run's ``config.json``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from limner.errors import UsageError

BACKBONES = ("unet", "dit")  # the networks behind the EDM denoiser


@dataclass
class DiffusionConfig:
    """Resolved configuration of a diffusion model (what ``config.json`` holds under "family").

    Attributes:
        preset: the preset it was built from (for display; the dicts below are authoritative).
        resolution, channels: image size in pixels and channel count (1 or 3).
        net: the backbone's config as a dict (``UNetConfig`` or ``DiTConfig``); config files
            written before the DiT existed name it ``unet`` and still load.
        encoder: ``EncoderConfig`` as a dict (condition kind, vocabulary, widths).
        sigma_data, P_mean, P_std: EDM preconditioning and noise-level distribution: ln(sigma)
            ~ N(P_mean, P_std^2) in training. P_mean is -0.4 (EDM2's value, Karras et al. 2024),
            not EDM's CIFAR-10 -1.2: more training at high noise, where a sample's global
            shape is decided, took the Fashion-MNIST FD after 10 CPU-minutes from 15.4 to 6.3
            (benchmarks/README.md). Saved configs keep the value they were trained with.
        sigma_min, sigma_max: the sampling range of noise levels.
        cond_drop: probability of replacing a condition by the null condition in training
            (classifier-free guidance, Ho & Salimans 2022).
        sampler, steps, cfg, schedule: sampling defaults.
    """

    preset: str
    resolution: int
    channels: int
    net: dict[str, Any]
    encoder: dict[str, Any]
    backbone: str = "unet"  # "unet" or "dit" (Peebles & Xie 2023), see limner.models.diffusion.dit
    sigma_data: float = 0.5
    P_mean: float = -0.4
    P_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    cond_drop: float = 0.1
    sampler: str = "dpmpp_2m"
    steps: int = 20
    cfg: float = 2.0
    schedule: str = "karras"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> "DiffusionConfig":
        """Raise UsageError naming the first nonsensical field (a typo'd ``--set`` value) before
        any network is built; returns self."""
        from limner.samplers.base import SAMPLERS
        from limner.samplers.schedules import ScheduleName

        def bad(name: str, why: str) -> UsageError:
            return UsageError(f"family.{name}: {why}, got {getattr(self, name)!r}")

        for name in ("sigma_data", "P_std", "sigma_min", "sigma_max"):
            if not 0 < getattr(self, name) < math.inf:
                raise bad(name, "must be a positive number")
        if not math.isfinite(self.P_mean):
            raise bad("P_mean", "must be a finite number")
        if self.sigma_min >= self.sigma_max:
            raise bad("sigma_min", f"must be below sigma_max ({self.sigma_max})")
        if not 0 <= self.cond_drop <= 1:
            raise bad("cond_drop", "must be in [0, 1]")
        if not 0 <= self.cfg < math.inf:
            raise bad("cfg", "must be >= 0")
        if self.steps < 1:
            raise bad("steps", "must be at least 1")
        if self.sampler not in SAMPLERS:
            raise bad("sampler", f"must be one of {', '.join(sorted(SAMPLERS))}")
        if self.backbone not in BACKBONES:
            raise bad("backbone", f"must be one of {', '.join(BACKBONES)}")
        if self.schedule not in {s.value for s in ScheduleName}:
            raise bad("schedule", f"must be one of {', '.join(s.value for s in ScheduleName)}")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiffusionConfig":
        if "unet" in data and "net" not in data:  # saved before the backbone was a choice
            data = {**{k: v for k, v in data.items() if k != "unet"}, "net": data["unet"], "backbone": "unet"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown diffusion config key(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Preset:
    """A named model size and the training recipe that goes with it.

    Attributes:
        unet: U-Net size preset name (``limner.models.diffusion.unet.UNET_PRESETS``).
        dit: DiT size with ``--set family.backbone=dit`` (``limner.models.diffusion.dit.DIT_PRESETS``).
        text_dim, text_layers: width and depth of the jointly trained text encoder.
        train: TrainConfig defaults for this size (the CLI overrides them).
    """

    unet: str
    text_dim: int
    text_layers: int
    train: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    dit: str = "S/4"


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        unet="tiny", dit="tiny", text_dim=32, text_layers=1,
        train=dict(batch_size=8, lr=1e-3, warmup_steps=5, steps=50, sample_every=0, save_every=25,
                   ema_decay=0.99, log_every=5),
        description="a few thousand parameters, for tests",
    ),
    "small": Preset(
        unet="small", dit="S/4", text_dim=128, text_layers=2,
        train=dict(batch_size=32, lr=2e-3, warmup_steps=100, lr_decay="cosine", steps=1500,
                   sample_every=250, save_every=250, ema_decay=0.995, log_every=10),
        description="a few million parameters; trains on a laptop CPU at 32 px",
    ),
    "base": Preset(
        unet="base", dit="B/2", text_dim=256, text_layers=4,
        train=dict(batch_size=128, lr=1e-3, warmup_steps=500, lr_decay="cosine", min_lr_ratio=0.1,
                   steps=50000, sample_every=2500, save_every=2500, ema_decay=0.9995, log_every=50),
        description="for a GPU, 32-64 px",
    ),
}


def get_preset(name: str) -> Preset:
    """Look up a diffusion preset by name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(
            f"--preset: unknown preset {name!r} for family diffusion (choose from {', '.join(PRESETS)})"
        ) from None
