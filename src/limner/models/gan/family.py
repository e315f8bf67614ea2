"""The GAN family: a StyleGAN2-lite generator and a residual projection discriminator, trained
with the non-saturating logistic loss, lazy R1 and differentiable (optionally adaptive)
augmentation, and sampled from the EMA generator with the truncation trick.

References: Goodfellow et al. 2014 (GANs, the non-saturating loss); Karras et al. 2019
(StyleGAN: mapping network, truncation), 2020 (StyleGAN2: demodulation, lazy regularisation)
and 2020 (ADA: adaptive augmentation probability); Zhao et al. 2020 (DiffAugment); Mescheder
et al. 2018 (R1); Miyato & Koyama 2018 (projection discriminator).

Modules: ``G`` (condition encoder + mapping + synthesis; keeps an EMA copy used for sampling) and
``D`` (its own condition encoder of the same config + residual discriminator + projection head).
Giving D its own encoder, rather than G's output detached, is Miyato & Koyama's design (D learns
its own class embedding) and keeps each trainable parameter in exactly one module and one
optimizer. Both encoders read the same prepared inputs, so captions are tokenised (or run
through a frozen model) once.

Generation ignores ``sampler``, ``steps``, ``cfg`` and ``negative``: a GAN draws an image in one
forward pass and has no classifier-free guidance. ``truncation`` (psi, default 1) applies.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from limner.conditioning import CondKind, build_encoder, resolve_encoder_config
from limner.conditioning.base import CondInputs
from limner.conditioning.encoder_base import CondEncoder
from limner.conditioning.encoders import EncoderConfig
from limner.data.batch import Batch
from limner.errors import UsageError
from limner.models.base import (
    DataInfo,
    FamilyBase,
    GenerationOutput,
    OptimizerSpec,
    ProgressCallback,
    StepContext,
)
from limner.models.declaration import Capability, FamilyDeclaration, OptionSpec, preset_lines
from limner.models.diffusion.family import to_uint8
from limner.models.gan.augment import AdaptiveProbability, DiffAugment
from limner.models.gan.config import PRESETS, GANConfig, get_preset
from limner.models.gan.discriminator import Discriminator, DiscriminatorConfig
from limner.models.gan.generator import Generator, GeneratorConfig
from limner.models.gan.losses import R1Penalty
from limner.models.gan.step import GANStep
from limner.overrides import merge_overrides


class GANFamily(FamilyBase):
    """Family plug-in for GANs (see ``limner.models.base.Family``)."""

    name: ClassVar[str] = "gan"
    declaration: ClassVar[FamilyDeclaration] = FamilyDeclaration(
        summary="StyleGAN2-style GAN with R1 and adaptive augmentation (Karras et al. 2019, 2020)",
        options=(OptionSpec("truncation", float, "truncation psi: 1 = none, 0 = the average image "
                            "(default: 1)", min=0),),
        capabilities=frozenset({Capability.interpolate}),
        presets=preset_lines(PRESETS),
    )
    # Config fields that follow from the data or another option; ``overrides`` may not set them.
    fixed_settings: ClassVar[dict[str, str]] = {
        "preset": "use --preset",
        "resolution": "use --resolution",
        "channels": "follows the data",
        "encoder": "follows the data, --cond and --text-encoder",
        **{f"{net}.{name}": why for net in ("generator", "discriminator")
           for name, why in (("resolution", "use --resolution"), ("channels", "follows the data"),
                             ("cond_dim", "follows the condition"))},
    }

    def __init__(self, config: GANConfig):
        self.config = config
        enc = EncoderConfig.from_dict(config.encoder)
        self.G = Generator(GeneratorConfig.from_dict(config.generator), _vector_encoder(enc))
        self.D = Discriminator(DiscriminatorConfig.from_dict(config.discriminator),
                               _vector_encoder(enc))
        self.ada = AdaptiveProbability(config.augment_p, config.ada_target, config.ada_interval,
                                       config.ada_kimg)
        self.gan_step = GANStep(self.G, self.D, R1Penalty(config.r1_gamma, config.r1_interval),
                            DiffAugment(config.augment), self.ada,
                            conditional=enc.kind != CondKind.none, mode_seeking=config.mode_seeking)

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(
        cls,
        preset: str,
        data: DataInfo,
        cond: CondKind | str,
        *,
        text_encoder: str = "trained",
        overrides: dict[str, Any] | None = None,
    ) -> "GANFamily":
        """A new GAN for ``data`` from a named preset; resolves everything saved in the config."""
        p = get_preset(preset)
        enc = resolve_encoder_config(cond, data, text_encoder=text_encoder, dim=p.cond_dim,
                                     layers=p.text_layers)
        cond_dim = 0 if enc.kind == CondKind.none else enc.dim
        size = dict(resolution=data.resolution, channels=data.channels, cond_dim=cond_dim)
        cfg = GANConfig(
            preset=preset,
            resolution=data.resolution,
            channels=data.channels,
            generator=GeneratorConfig(**p.generator, **size).to_dict(),
            discriminator=DiscriminatorConfig(**p.discriminator, **size).to_dict(),
            encoder=enc.to_dict(),
            **p.family,
        )
        if overrides:  # any config field at any depth, checked (limner.overrides)
            cfg = GANConfig.from_dict(
                merge_overrides(cfg.to_dict(), overrides, where="family", fixed=cls.fixed_settings))
        return cls(cfg)

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> "GANFamily":
        """Rebuild from the dict saved in a run's config.json."""
        return cls(GANConfig.from_dict(data))

    @staticmethod
    def train_defaults(preset: str) -> dict[str, Any]:
        """TrainConfig defaults that go with a preset (Adam betas (0, 0.99), no warm-up/clip)."""
        return dict(get_preset(preset).train)

    # ----------------------------------------------------------------- plug-in surface
    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def ema_names(self) -> list[str]:
        return ["G"]

    def optimizers(self) -> dict[str, OptimizerSpec]:
        """One Adam per network; lr and betas come from the run's train config."""
        return {name: OptimizerSpec(params=[p for p in module.parameters() if p.requires_grad])
                for name, module in (("D", self.D), ("G", self.G))}

    def extra_state(self) -> dict[str, Any]:
        """The augmentation probability and ADA's partial statistics."""
        return {"ada": self.ada.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.ada.load_state_dict(state["ada"])

    def option_defaults(self) -> dict[str, Any]:
        """No run-level defaults to record: a missing truncation means the family's own."""
        return {}

    @property
    def cond_kind(self) -> CondKind:
        return self.G.encoder.kind

    @property
    def encoder(self) -> CondEncoder:
        """The generator's condition encoder (prepare inputs, resolve labels)."""
        return self.G.encoder

    # ----------------------------------------------------------------- training
    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """One D update then one G update (``step.GANStep``)."""
        return self.gan_step(batch, ctx)

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, request, *, callback: ProgressCallback | None = None) -> GenerationOutput:
        """One forward pass of G: latent i from ``torch.Generator().manual_seed(seeds[i])``, the
        request's condition, truncation psi = ``request.truncation`` (default 1)."""
        psi = _truncation(request.truncation)
        device = next(self.G.parameters()).device
        z = request.noise if getattr(request, "noise", None) is not None else torch.stack(
            [_latent(self.G.config.z_dim, s) for s in request.seeds])
        z = z.to(device)
        inputs = self._request_inputs(request, len(request.seeds))
        was_training = self.G.training
        self.G.eval()
        try:
            x = self.G.sample(z, inputs.to(device) if inputs is not None else None, psi=psi,
                              centre_samples=self.config.truncation_samples)
        finally:
            self.G.train(was_training)
        if callback is not None:
            callback({"i": 0, "steps": 1, "x": x, "denoised": x})
        return GenerationOutput(images=to_uint8(x), seeds=list(request.seeds),
                                extra={"truncation": psi})

    def _request_inputs(self, request, B: int) -> CondInputs | None:
        return self.encoder.prepare_request(request, B)

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one image's latent z (what interpolation blends)."""
        return (self.G.config.z_dim,)


def _latent(z_dim: int, seed: int) -> torch.Tensor:
    """z [z_dim] of one image, from its own seeded CPU generator."""
    return torch.randn(z_dim, generator=torch.Generator().manual_seed(int(seed)))


def _truncation(psi: float | None) -> float:
    """The truncation psi of a request (None = 1, no truncation)."""
    if psi is None:
        return 1.0
    if not isinstance(psi, (int, float)) or isinstance(psi, bool) or not math.isfinite(psi):
        raise UsageError(f"--truncation must be a finite number, got {psi!r}")
    return float(psi)


def _vector_encoder(config: EncoderConfig) -> CondEncoder:
    """A condition encoder whose parameters that do not feed ``Conditioning.vector`` are frozen.

    The GAN reads only the vector and never the null condition (there is no condition dropout),
    so e.g. a text encoder's null token or MiniLM's token projection would get no gradient, which
    DDP with ``find_unused_parameters=False`` refuses. They are found by one probe forward.
    """
    encoder = build_encoder(config)
    probe = _probe_inputs(encoder)
    params = [p for p in encoder.parameters() if p.requires_grad]
    if probe is None or not params:
        return encoder
    with torch.enable_grad():
        vector = encoder(probe).vector
        grads = torch.autograd.grad(vector.sum(), params, allow_unused=True)
    for p, g in zip(params, grads):
        if g is None:
            p.requires_grad_(False)
    return encoder


def _probe_inputs(encoder: CondEncoder) -> CondInputs | None:
    if encoder.kind == CondKind.class_:
        return encoder.prepare(labels=[0])
    if encoder.kind == CondKind.text:
        return encoder.prepare(captions=["a"])
    return None
