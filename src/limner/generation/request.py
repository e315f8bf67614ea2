"""The generation request and its record: one schema for the CLI, the HTTP API and the studio.

A :class:`GenerationRequest` is what a user asks for. A :class:`GenerationRecord` is that request
plus everything that was resolved (per-image seed, model hash, versions, device, dtype); it is
written into every PNG and feeding it back regenerates the same pixels.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Precision = Literal["fp32", "bf16"]
# precision → the record's dtype, and back (precision_of)
PRECISION_DTYPES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16"}


def precision_of(dtype: str) -> str | None:
    """The precision ("fp32", "bf16") a record's ``dtype`` was sampled in; None if unknown."""
    return next((p for p, name in PRECISION_DTYPES.items() if name == dtype), None)

# The per-batch request a family sees lives below training and generation (both build it).
from limner.models.request import BatchRequest  # noqa: E402,F401 - re-exported

RECORD_SCHEMA = 1


@dataclass
class GenerationRequest:
    """What to generate.

    Attributes:
        run: run folder to load the model from.
        prompt / negative: text prompt and negative prompt (text-conditioned runs).
        label: class id or class name (class-conditioned runs).
        seed: seed of the first image; image i uses ``seed + i``. None picks a random seed.
        num: number of images.
        sampler / steps / cfg: sampler name, number of steps, classifier-free guidance scale;
            None means the family's default.
        truncation: truncation psi (GAN families).
        sigma_max: noise level the diffusion samplers start from; None means the run's
            (80 for the EDM schedule). Lower helps very short schedules (about 20 for 5 steps).
        options: further generation options the run's family declares (``temperature``,
            ``top_k``, ...: ``limner.models.declaration``); checked against it when generating.
        step: checkpoint step to load; None = the newest valid checkpoint.
        batch_size: images per forward batch (part of the record: see ``GenerationRecord``).
        precision: "fp32", or "bf16" to run the networks under bfloat16 autocast (faster on
            CPUs with AVX-512 and on recent GPUs; slightly different pixels, recorded as the
            record's ``dtype``).
    """

    run: str
    prompt: str | None = None
    negative: str | None = None
    label: int | str | None = None
    seed: int | None = None
    num: int = 1
    sampler: str | None = None
    steps: int | None = None
    cfg: float | None = None
    truncation: float | None = None
    sigma_max: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    step: int | str | None = None  # a step, "best", or None = newest
    batch_size: int = 16
    precision: Precision = "fp32"
    # image-to-image and inpainting (families declaring img2img / inpaint)
    init_image: str | None = None  # input image file; SDEdit from it
    strength: float | None = None  # fraction of the schedule run from the input (default 0.6; 1 with a mask)
    mask: str | None = None  # mask image file: white = regenerate, black = keep bitwise
    resample: int | None = None  # RePaint passes per step when inpainting (default 3)


@dataclass
class GenerationRecord:
    """A request plus what was resolved for one image. ``batch_seeds`` and ``index`` pin the
    forward batch the image came from, so regeneration is bitwise identical on CPU even where
    kernels are not batch-size invariant."""

    prompt: str | None
    negative: str | None
    label: int | None
    seed: int
    sampler: str | None
    steps: int | None
    cfg: float | None
    truncation: float | None
    batch_seeds: list[int]
    index: int
    family: str
    run_id: str
    run_path: str
    step: int
    model_hash: str
    width: int
    height: int
    device: str
    dtype: str
    limner_version: str
    torch_version: str
    python_version: str = field(default_factory=platform.python_version)
    created: str = ""
    sigma_max: float | None = None  # as requested (None = the run's); absent from older records
    cpu_kernels: str | None = None  # limner.nn.conv.cpu_kernel_setting() on CPU; None elsewhere and in older records
    options: dict[str, Any] = field(default_factory=dict)  # further family options as requested (temperature, ...)
    # image-to-image / inpainting inputs: {"sha256", "name" (in the inputs/ store), "source"}
    init_image: dict[str, str] | None = None
    mask: dict[str, str] | None = None
    strength: float | None = None
    resample: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema: int = RECORD_SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
