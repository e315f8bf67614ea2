"""Configuration of the token families (MaskGIT, autoregressive) and their named presets.

A run's config holds the transformer's shape, the condition encoder, a frozen copy of the VQ-VAE
tokenizer's config and where it came from, and the sampling defaults. Presets follow the other
families' sizes (tiny for tests, small for a laptop CPU, base for a GPU).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from limner.errors import UsageError

TokenKind = Literal["maskgit", "autoregressive"]


@dataclass
class TransformerConfig:
    """Resolved configuration of a token-family run (``config.json`` under "family").

    Attributes:
        preset: the preset it was built from.
        kind: "maskgit" (bidirectional, masked-token training) or "autoregressive" (causal).
        resolution, channels: image size and channels (the VQ-VAE's).
        grid: side of the token grid (h = w).
        net: ``TokenNetConfig`` as a dict.
        encoder: ``EncoderConfig`` as a dict.
        vq: the frozen tokenizer's ``VAEConfig`` as a dict (its weights are in the run).
        vq_run: path, run id, step and model hash of the VQ-VAE run it was copied from.
        cond_drop: probability of training a row with the null condition (classifier-free
            guidance, Ho & Salimans 2022).
        label_smoothing: of the cross-entropy (MaskGIT uses 0.1).
        steps: MaskGIT unmasking steps (Chang et al. 2022 use 8-12).
        temperature: MaskGIT: choice temperature of the confidence noise, annealed linearly to 0
            over the steps (4.5 in the paper); autoregressive: softmax temperature.
        cfg: guidance scale on the logits (1 = none).
        top_k, top_p: autoregressive filtering (0 / 1.0 = off).
    """

    preset: str
    kind: str
    resolution: int
    channels: int
    grid: int
    net: dict[str, Any]
    encoder: dict[str, Any]
    vq: dict[str, Any]
    vq_run: dict[str, Any] = field(default_factory=dict)
    cond_drop: float = 0.1
    label_smoothing: float = 0.1
    steps: int = 8  # MaskGIT unmasking steps (Chang et al. 2022 use 8 at 256 px)
    temperature: float = 4.5
    cfg: float = 2.0
    top_k: int = 0
    top_p: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> "TransformerConfig":
        """A UsageError naming the first nonsensical field (a typo'd ``--set``); returns self."""
        def bad(name: str, why: str) -> UsageError:
            return UsageError(f"{why}, got {getattr(self, name)!r}", field=f"family.{name}")

        if self.kind not in ("maskgit", "autoregressive"):
            raise bad("kind", "must be maskgit or autoregressive")
        for name in ("cond_drop", "label_smoothing"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "must be in [0, 1]")
        if not 1 <= self.steps <= self.grid * self.grid:
            raise bad("steps", f"must be in [1, {self.grid * self.grid}] (the number of tokens)")
        for name in ("temperature", "cfg"):
            if not 0 <= getattr(self, name) < math.inf:
                raise bad(name, "must be a finite number >= 0")
        if self.top_k < 0:
            raise bad("top_k", "must be >= 0")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1]")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TransformerConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise UsageError(f"unknown token-family config key(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Preset:
    """A transformer size plus its training recipe.

    Attributes:
        net: ``TokenNetConfig`` fields (dim, depth, heads, ...).
        text_dim, text_layers: the jointly trained text encoder's width and depth.
        train: TrainConfig defaults.
    """

    net: dict[str, Any]
    text_dim: int
    text_layers: int
    train: dict[str, Any] = field(default_factory=dict)
    description: str = ""


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        net=dict(dim=32, depth=2, heads=2), text_dim=32, text_layers=1,
        train=dict(batch_size=8, lr=1e-3, warmup_steps=5, steps=50, sample_every=0, save_every=25,
                   ema_decay=0.99, log_every=5),
        description="tens of thousands of parameters, for tests",
    ),
    "small": Preset(
        net=dict(dim=256, depth=4, heads=4, dropout=0.1), text_dim=128, text_layers=2,
        train=dict(batch_size=32, lr=1e-3, warmup_steps=100, lr_decay="cosine", steps=3000,
                   sample_every=500, save_every=500, ema_decay=0.995, log_every=10,
                   weight_decay=0.05),
        description="~3.5M parameters; trains on a laptop CPU on an 8x8 token grid",
    ),
    "base": Preset(
        net=dict(dim=512, depth=12, heads=8, dropout=0.1), text_dim=256, text_layers=4,
        train=dict(batch_size=256, lr=4e-4, warmup_steps=1000, lr_decay="cosine", steps=50000,
                   sample_every=2500, save_every=2500, ema_decay=0.9995, log_every=50,
                   weight_decay=0.05),
        description="~40M parameters, for a GPU",
    ),
}


def get_preset(name: str, family: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r} for family {family} (choose from {', '.join(PRESETS)})",
                         field="preset") from None
