"""The family plug-in surface: the only things the trainer, the sampler CLI and (later) the
studio and evaluation know about a model family.

A family builds its networks from a config, names its optimizers, runs one training step
(including its own backward passes, so a GAN can alternate D and G inside it), turns a generation
request into images, and says which modules are saved (and which of them keep an EMA copy).
Adding a family means one folder under ``limner/models/`` and one line in ``registry.py``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from limner.data.batch import Batch
from limner.models.declaration import FamilyDeclaration


@dataclass
class OptimizerSpec:
    """What the trainer needs to build one optimizer for a family.

    ``params`` are the trainable parameters (or param groups); ``lr``/``betas``/``weight_decay``
    default to the run's training config when None.
    """

    params: Iterable[nn.Parameter] | list[dict[str, Any]]
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None


class StepContext(Protocol):
    """Handed by the trainer to ``Family.train_step``; hides accumulation, mixed precision, DDP
    and clipping so a family step reads like the algorithm.

    Typical diffusion step::

        for micro in ctx.micro_batches(batch):
            with ctx.autocast():
                loss = self.loss(ctx.net("model"), micro)
            ctx.backward(loss, "model")
        ctx.optimizer_step("model")
    """

    step: int

    def net(self, name: str) -> nn.Module:
        """The (possibly DDP-wrapped) module ``name``; call it for forward passes in training."""
        ...

    def micro_batches(self, batch: Batch) -> list[Batch]: ...

    def autocast(self) -> AbstractContextManager: ...

    def backward(self, loss: Tensor, optimizer: str) -> None:
        """Backward of a micro-batch loss (scaled by 1/accumulation; DDP sync on the last)."""
        ...

    def optimizer_step(self, optimizer: str) -> None:
        """Clip, step, zero grads and advance the LR schedule of one optimizer."""
        ...

    def generator(self) -> torch.Generator | None:
        """Generator for the step's randomness (None = torch's global RNG, which the trainer
        seeds and checkpoints)."""
        ...


@dataclass
class GenerationOutput:
    """Images produced for a request.

    Attributes:
        images: [N, C, H, W] uint8 on the CPU.
        seeds:  the seed each image was drawn with (len N).
        extra:  per-family resolved details for the record (e.g. the sigma schedule used).
    """

    images: Tensor
    seeds: list[int]
    extra: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[dict[str, Any]], None]


@runtime_checkable
class Family(Protocol):
    """A model family plug-in (diffusion, GAN, VAE, token transformer).

    Besides these instance methods a family class provides three constructors the CLI uses:
    ``create(preset, data: DataInfo, cond, *, text_encoder, overrides)`` for a new run,
    ``from_config(dict)`` to rebuild from a run's config.json, and ``train_defaults(preset)``
    for the TrainConfig values that go with a preset.

    ``overrides`` (``limner train --set family.NAME=VALUE``) are config fields as saved in
    ``config.json``, nested dicts for nested fields; a family merges them with
    ``limner.overrides.merge_overrides``, which checks each against the value it replaces, and
    lists the fields that follow from the data or from other options in a class attribute
    ``fixed_settings: dict[path, what to use instead]``.
    """

    name: ClassVar[str]
    # What the family offers: generation options, runs it builds on, capabilities
    # (``limner.models.declaration``); front ends read it instead of testing ``name``.
    declaration: ClassVar["FamilyDeclaration"]

    def option_defaults(self) -> dict[str, Any]:
        """The run's own value of generation options a request left out (for the record)."""
        ...

    def modules(self) -> dict[str, nn.Module]:
        """Named sub-networks; each is saved as ``<name>.safetensors``."""
        ...

    def ema_names(self) -> list[str]:
        """Names (subset of ``modules()``) that keep an EMA copy used for sampling."""
        ...

    def optimizers(self) -> dict[str, OptimizerSpec]:
        """Named optimizers the step uses (``"model"`` for single-network families)."""
        ...

    def config_dict(self) -> dict[str, Any]:
        """The resolved family config (JSON-able) that rebuilds this family with ``from_config``."""
        ...

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """One optimisation step; returns scalars to log (must include ``loss``)."""
        ...

    def extra_state(self) -> dict[str, Any]:
        """Family state beyond weights/optimizers (e.g. adaptive augmentation p); tensors or
        plain Python values, saved with the resumable state."""
        ...

    def load_extra_state(self, state: dict[str, Any]) -> None: ...

    @torch.no_grad()
    def generate(
        self,
        request: "GenerationRequestLike",
        *,
        callback: ProgressCallback | None = None,
    ) -> GenerationOutput:
        """Turn a generation request into images with the modules' current weights (the trainer
        and the loader put the EMA weights in first). Deterministic given the request's seeds:
        image i of a batch is drawn from ``torch.Generator().manual_seed(seeds[i])``."""
        ...


class FamilyBase:
    """Defaults of the plug-in surface (:class:`Family`) that most families share, for a family
    to inherit and override where it differs (a GAN's two networks, its augmentation state):
    one network ``self.model`` with an EMA copy and one optimizer over its trainable parameters,
    a config object with ``to_dict`` (``self.config``), and no state besides weights and
    optimizers (caches of encoded images are rebuilt from the images)."""

    model: nn.Module
    config: Any

    def ema_names(self) -> list[str]:
        return ["model"]

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"model": OptimizerSpec(params=[p for p in self.model.parameters() if p.requires_grad])}

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


class GenerationRequestLike(Protocol):
    """The fields of ``limner.generation.request.GenerationRequest`` a family reads."""

    prompts: list[str] | None  # one per image, or None
    negative: str | None
    labels: list[int] | None  # one per image, or None
    seeds: list[int]  # one per image
    sampler: str | None
    steps: int | None
    cfg: float | None
    truncation: float | None
    sigma_max: float | None  # diffusion samplers' starting noise level; None = the family's
    options: dict[str, Any]  # further declared options (temperature, top_k, ...), checked


@dataclass
class DataInfo:
    """What a family needs to know about the data to build a *new* model (then saved in its
    config, so reloading never needs the dataset)."""

    resolution: int
    channels: int
    captions: list[str] | None = None  # all training captions (e.g. for a tokenizer vocabulary)
    num_classes: int | None = None
    class_names: list[str] | None = None
