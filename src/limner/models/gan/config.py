"""Configuration of the GAN family and its named presets.

A preset names the network sizes plus the training recipe that suits a GAN (Adam with
``betas = (0, 0.99)`` and lr ~2e-3, no warm-up, no gradient clipping, as StyleGAN2 trains), so
``--family gan --preset small`` reproduces a run by name. Everything resolved for a run is saved
in its ``config.json`` under ``family.config``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from limner.errors import UsageError

AugmentOp = Literal["color", "translation", "cutout"]


def checked_keys(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    """``data`` when every key is a field of dataclass ``cls``; UsageError naming unknown keys
    (a typo in a saved config must not be silently dropped)."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise UsageError(f"unknown {what} config key(s): {', '.join(unknown)}")
    return dict(data)


@dataclass
class GANConfig:
    """Resolved configuration of a GAN (what ``config.json`` holds under "family").

    Attributes:
        preset: the preset it was built from (for display; the fields below are authoritative).
        resolution, channels: image side in pixels and channel count (1 or 3).
        generator: ``GeneratorConfig`` as a dict.
        discriminator: ``DiscriminatorConfig`` as a dict.
        encoder: ``EncoderConfig`` as a dict; G and D each build their own encoder from it.
        r1_gamma: weight gamma of the R1 penalty ``gamma/2 E||grad D(x)||^2`` on real images
            (Mescheder et al. 2018, https://arxiv.org/abs/1801.04406); 0 disables it.
        r1_interval: apply R1 every this many steps, scaled by the interval (StyleGAN2's lazy
            regularisation, Karras et al. 2020, §3.1).
        augment: DiffAugment operations applied to every image D sees, real and fake
            (Zhao et al. 2020, https://arxiv.org/abs/2006.10738); empty = none.
        augment_p: probability each operation is applied to an image: the fixed value, or the
            starting value when adaptive.
        ada_target: target of ADA's overfitting heuristic r_t = E[sign(D(real))]; p is adjusted
            toward it (Karras et al. 2020, https://arxiv.org/abs/2006.06676, §3); None = fixed p.
        ada_interval: steps between adjustments of p.
        ada_kimg: thousands of real images over which p can move from 0 to 1.
        truncation_samples: latents averaged for the per-condition truncation centre.
        mode_seeking: weight of MSGAN's mode-seeking term in the G loss (Mao et al. 2019,
            https://arxiv.org/abs/1903.05628), against a conditional generator that ignores z;
            0 = off (runs saved before it existed load with 0).
    """

    preset: str
    resolution: int
    channels: int
    generator: dict[str, Any]
    discriminator: dict[str, Any]
    encoder: dict[str, Any]
    r1_gamma: float = 0.05
    r1_interval: int = 16
    augment: list[AugmentOp] = field(default_factory=lambda: ["color", "translation", "cutout"])
    augment_p: float = 0.0
    ada_target: float | None = 0.6
    ada_interval: int = 4
    ada_kimg: float = 20.0
    truncation_samples: int = 256
    mode_seeking: float = 0.0

    def __post_init__(self) -> None:
        self.augment = list(self.augment)
        bad = [op for op in self.augment if op not in get_args(AugmentOp)]
        if bad:
            raise UsageError(f"unknown augmentation(s) {bad}; choose from {list(get_args(AugmentOp))}")
        _check(self.r1_gamma >= 0 and math.isfinite(self.r1_gamma), "r1_gamma must be >= 0")
        _check(0.0 <= self.augment_p <= 1.0, "augment_p must be in [0, 1]")
        _check(self.ada_target is None or 0.0 <= self.ada_target <= 1.0,
               "ada_target must be in [0, 1] or null")
        _check(self.ada_kimg > 0, "ada_kimg must be positive")
        _check(self.mode_seeking >= 0 and math.isfinite(self.mode_seeking), "mode_seeking must be >= 0")
        for name in ("r1_interval", "ada_interval", "truncation_samples"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                   f"{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GANConfig":
        return cls(**checked_keys(cls, data, "gan"))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(f"gan config: {message}")


@dataclass(frozen=True)
class Preset:
    """A named model size and the training recipe that goes with it.

    Attributes:
        generator: ``GeneratorConfig`` fields besides resolution/channels/cond_dim.
        discriminator: ``DiscriminatorConfig`` fields besides resolution/channels/cond_dim.
        cond_dim, text_layers: width of the condition encoders and depth of a trained text encoder.
        family: ``GANConfig`` fields (loss and augmentation).
        train: TrainConfig defaults for this size (the CLI overrides them).
    """

    generator: dict[str, Any]
    discriminator: dict[str, Any]
    cond_dim: int
    text_layers: int
    family: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    description: str = ""


# Adam with beta1 = 0 and no clipping or warm-up: the StyleGAN2 recipe.
_GAN_OPTIM = dict(betas=(0.0, 0.99), warmup_steps=0, grad_clip=None, weight_decay=0.0)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        generator=dict(z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32),
        discriminator=dict(channel_base=256, channel_max=32),
        cond_dim=32, text_layers=1,
        family=dict(r1_gamma=0.01, r1_interval=4, ada_interval=2, ada_kimg=0.5,
                    truncation_samples=64, mode_seeking=1.0),
        train=dict(batch_size=8, lr=2e-3, steps=50, sample_every=0, save_every=25,
                   ema_decay=0.99, log_every=5, **_GAN_OPTIM),
        description="tens of thousands of parameters, for tests (16 px)",
    ),
    "small": Preset(
        generator=dict(z_dim=128, w_dim=128, mapping_layers=4, channel_base=1024, channel_max=128),
        discriminator=dict(channel_base=1024, channel_max=128),
        cond_dim=128, text_layers=2,
        family=dict(r1_gamma=0.02, r1_interval=16, ada_interval=4, ada_kimg=20.0, mode_seeking=1.0),
        train=dict(batch_size=32, lr=2e-3, steps=5000, sample_every=500, save_every=500,
                   ema_decay=0.999, log_every=10, **_GAN_OPTIM),
        description="about a million parameters per network; trains on a laptop CPU at 32 px",
    ),
    "base": Preset(
        generator=dict(z_dim=256, w_dim=256, mapping_layers=4, channel_base=8192, channel_max=256),
        discriminator=dict(channel_base=8192, channel_max=256),
        cond_dim=256, text_layers=4,
        family=dict(r1_gamma=0.05, r1_interval=16, ada_interval=4, ada_kimg=100.0, mode_seeking=1.0),
        train=dict(batch_size=64, lr=2.5e-3, steps=50000, sample_every=2500, save_every=2500,
                   ema_decay=0.9995, log_every=50, **_GAN_OPTIM),
        description="for a GPU, 32-64 px",
    ),
}


def get_preset(name: str) -> Preset:
    """Look up a GAN preset by name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(
            f"--preset: unknown preset {name!r} for family gan (choose from {', '.join(PRESETS)})"
        ) from None
