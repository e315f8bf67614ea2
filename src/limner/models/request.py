"""``BatchRequest``: one forward batch as a family sees it. Training (sample grids),
generation and evaluation all build these, so it lives here, below all three (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BatchRequest:
    """One forward batch as a family sees it (satisfies ``GenerationRequestLike``)."""

    seeds: list[int]
    prompts: list[str] | None = None
    negative: str | None = None
    labels: list[int] | None = None
    sampler: str | None = None
    steps: int | None = None
    cfg: float | None = None
    truncation: float | None = None
    sigma_max: float | None = None
    options: dict[str, Any] = field(default_factory=dict)  # further declared options, checked
    # Interpolation (``limner interpolate``): explicit unit-Gaussian starting latents
    # [B, *family.noise_shape] instead of the seeds' draws, and a second condition blended in
    # with weight mix_weights[i] for row i.
    noise: Any = None
    mix_prompts: list[str] | None = None
    mix_labels: list[int] | None = None
    mix_weights: list[float] | None = None
    # Image-to-image / inpainting (families declaring Capability.img2img / inpaint): the input
    # image uint8 [B, C, H, W] at the run's resolution, the fraction of the schedule to run
    # (SDEdit strength), and a mask bool [B, 1, H, W] (True = regenerate) with the number of
    # RePaint resampling passes per step.
    init: Any = None
    strength: float = 1.0
    mask: Any = None
    resample: int = 1
