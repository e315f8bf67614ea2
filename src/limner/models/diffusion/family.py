"""The pixel-space diffusion family: an EDM-preconditioned U-Net with an optional condition
encoder (class label, jointly trained text encoder, or frozen MiniLM), trained with the EDM loss
and sampled with any sampler in ``limner.samplers``, with classifier-free guidance and negative
prompts.

References: Karras et al. 2022 (EDM: preconditioning, loss, noise schedule, Heun sampler);
Ho & Salimans 2022 (classifier-free guidance, condition dropout).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from limner.conditioning import CondKind, build_encoder, resolve_encoder_config
from limner.conditioning.base import Conditioning
from limner.conditioning.encoders import EncoderConfig
from limner.data.batch import Batch
from limner.errors import UsageError
from limner.models.base import DataInfo, FamilyBase, GenerationOutput, ProgressCallback, StepContext
from limner.models.declaration import Capability, FamilyDeclaration, OptionSpec, preset_lines
from limner.models.diffusion.config import BACKBONES, PRESETS, DiffusionConfig, get_preset
from limner.models.diffusion.dit import DiT, DiTConfig, dit_config
from limner.models.diffusion.losses import EDMLoss
from limner.models.diffusion.precond import EDMPrecond
from limner.models.diffusion.unet import UNet, UNetConfig, unet_config
from limner.overrides import merge_overrides
from limner.samplers import SAMPLERS, CFGDenoiser, sample

# The generation options of the EDM families (pixel and latent diffusion).
DIFFUSION_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("sampler", str, "diffusion sampler (default: the run's, dpmpp_2m)",
               choices=tuple(sorted(SAMPLERS))),
    OptionSpec("steps", int, "sampling steps (default: the run's)", min=1),
    OptionSpec("cfg", float, "classifier-free guidance scale; 1 = none (default: the run's)", min=0),
    OptionSpec("sigma_max", float, "noise level the diffusion samplers start from (default: the run's, "
               "80); about 20 suits 5-step schedules", min=0, min_open=True),
)


class DiffusionFamily(FamilyBase):
    """Family plug-in for pixel diffusion (see ``limner.models.base.Family``)."""

    name: ClassVar[str] = "diffusion"
    declaration: ClassVar[FamilyDeclaration] = FamilyDeclaration(
        summary="EDM diffusion in pixel space (Karras et al. 2022), U-Net or DiT backbone",
        options=DIFFUSION_OPTIONS,
        capabilities=frozenset({Capability.negative_prompt, Capability.interpolate,
                                Capability.img2img, Capability.inpaint}),
        presets=preset_lines(PRESETS),
    )
    # Config fields that follow from the data or another option; ``overrides`` may not set them.
    fixed_settings: ClassVar[dict[str, str]] = {
        "preset": "use --preset",
        "resolution": "use --resolution",
        "channels": "follows the data",
        "encoder": "follows the data, --cond and --text-encoder",
        "net.in_channels": "follows the data",
        "net.out_channels": "follows the data",
        "net.resolution": "use --resolution",
        "net.cond_dim": "follows the condition",
        "net.cross_attention": "follows the condition",
    }

    def __init__(self, config: DiffusionConfig):
        self.config = config
        encoder = build_encoder(EncoderConfig.from_dict(config.encoder))
        backbone = build_backbone(config.backbone, config.net)
        self.model = EDMPrecond(backbone, encoder, sigma_data=config.sigma_data)
        self.loss_fn = EDMLoss(config.P_mean, config.P_std, config.sigma_data)

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
        overrides_where: str = "family",
    ) -> "DiffusionFamily":
        """A new model for ``data`` from a named preset; resolves everything saved in the config.

        ``overrides`` sets config fields at any depth (``{"P_mean": -0.8, "net": {"dropout":
        0.1}}``), each checked against the preset's value (``limner.overrides``); the fields in
        ``fixed_settings`` follow from the data and cannot be set. ``backbone`` ("unet" or "dit")
        picks the network first, so ``net.*`` are that network's fields; ``unet.*`` is the older
        spelling of ``net.*`` for the U-Net. ``overrides_where`` is their prefix in error
        messages (a family that embeds this config nests it deeper)."""
        p = get_preset(preset)
        overrides = dict(overrides or {})
        backbone = overrides.pop("backbone", "unet")
        if backbone not in BACKBONES:
            raise UsageError(f"must be one of {', '.join(BACKBONES)}, got {backbone!r}",
                             field=f"{overrides_where}.backbone")
        net_key = "unet" if "unet" in overrides else "net"
        if net_key == "unet" and backbone != "unet":
            raise UsageError(f"names the U-Net's settings, and this run's backbone is {backbone}: set "
                             f"{overrides_where}.net.NAME", field=f"{overrides_where}.unet")
        enc = resolve_encoder_config(
            cond, data, text_encoder=text_encoder, dim=p.text_dim, layers=p.text_layers
        )
        shape = dict(
            in_channels=data.channels,
            out_channels=data.channels,
            resolution=data.resolution,
            cond_dim=0 if enc.kind == CondKind.none else enc.dim,
            cross_attention=enc.kind == CondKind.text,
        )
        net = unet_config(p.unet, **shape) if backbone == "unet" else dit_config(p.dit, **shape)
        cfg = DiffusionConfig(
            preset=preset,
            resolution=data.resolution,
            channels=data.channels,
            net=net.to_dict(),
            encoder=enc.to_dict(),
            backbone=backbone,
        )
        if overrides:
            base = cfg.to_dict()
            base[net_key] = base.pop("net")
            fixed = {net_key + k[3:] if k.startswith("net.") else k: why for k, why in cls.fixed_settings.items()}
            merged = merge_overrides(base, overrides, where=overrides_where, fixed=fixed)
            merged["net"] = merged.pop(net_key)
            cfg = DiffusionConfig.from_dict(merged)
        return cls(cfg.validate())

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> "DiffusionFamily":
        """Rebuild from the dict saved in a run's config.json."""
        return cls(DiffusionConfig.from_dict(data))

    @staticmethod
    def train_defaults(preset: str) -> dict[str, Any]:
        """TrainConfig defaults that go with a preset."""
        return dict(get_preset(preset).train)

    # ----------------------------------------------------------------- plug-in surface
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def option_defaults(self) -> dict[str, Any]:
        """The run's own value of each generation option a request may leave out."""
        return {"sampler": self.config.sampler, "steps": self.config.steps, "cfg": self.config.cfg}

    @property
    def cond_kind(self) -> CondKind:
        return self.model.encoder.kind

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder

    # ----------------------------------------------------------------- training
    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """One EDM step: per micro-batch, draw sigma and noise, denoise, weighted MSE, backward."""
        total, n = 0.0, 0
        for micro in ctx.micro_batches(batch):
            device = micro.images.device
            gen = ctx.generator()
            inputs, drop = self._condition_inputs(micro, device, gen)
            with ctx.autocast():
                loss = self.loss_fn(ctx.net("model"), micro.images, inputs, drop, gen).mean()
            ctx.backward(loss, "model")
            total += float(loss.detach()) * len(micro)
            n += len(micro)
        ctx.optimizer_step("model")
        return {"loss": total / n}

    def _condition_inputs(self, micro: Batch, device: torch.device, gen: torch.Generator | None):
        if self.cond_kind == CondKind.none:
            return None, None
        inputs = self.encoder.prepare(
            captions=micro.captions, labels=micro.labels, batch_size=len(micro)
        ).to(device)
        drop = torch.rand(len(micro), device=device, generator=gen) < self.config.cond_drop
        return inputs, drop

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, request, *, callback: ProgressCallback | None = None) -> GenerationOutput:
        """Sample a batch: per-image seeded noise, condition (+ CFG/negative), chosen sampler."""
        cfg = self.config
        device = next(self.model.parameters()).device
        B = len(request.seeds)
        cond, uncond = self._encode_request(request, B, device)
        scale = cfg.cfg if request.cfg is None else request.cfg
        denoiser = self.model if uncond is None or scale == 1.0 else CFGDenoiser(self.model, uncond, scale)
        gens = [torch.Generator().manual_seed(int(s)) for s in request.seeds]
        noise = self._initial_noise(request, gens).to(device)
        was_training = self.model.training
        self.model.eval()
        try:
            if getattr(request, "init", None) is not None:  # image-to-image / inpainting
                x = self.edit(denoiser, cond, request, request.init.to(device).float() / 127.5 - 1.0,
                              request.mask, gens, callback)
            else:
                x = sample(
                    denoiser, noise, cond,
                    sampler=request.sampler or cfg.sampler,
                    steps=request.steps or cfg.steps,
                    sigma_min=cfg.sigma_min, sigma_max=sampling_sigma_max(cfg, request), schedule=cfg.schedule,
                    generator=gens, callback=callback,
                )
        finally:
            self.model.train(was_training)
        return GenerationOutput(images=to_uint8(x), seeds=list(request.seeds))

    def edit(self, denoiser, cond, request, x0: Tensor, mask: Tensor | None, gens, callback) -> Tensor:
        """SDEdit from ``x0`` (the input in this model's space), RePaint inside ``mask``
        (limner.samplers.editing)."""
        from limner.samplers.editing import edit_sample

        cfg = self.config
        return edit_sample(
            denoiser, x0, cond, sampler=request.sampler or cfg.sampler, steps=request.steps or cfg.steps,
            sigma_min=cfg.sigma_min, sigma_max=sampling_sigma_max(cfg, request), schedule=cfg.schedule,
            strength=request.strength, mask=None if mask is None else mask.to(x0.device),
            resample=request.resample, generator=gens, callback=callback,
        )

    def _encode_request(self, request, B: int, device: torch.device):
        if self.cond_kind == CondKind.none:
            return Conditioning.empty(B), None
        cond = self.encoder(self.encoder.prepare_request(request, B).to(device))
        if request.negative:
            neg = self.encoder.prepare(captions=[request.negative] * B, batch_size=B)
            uncond = self.encoder(neg.to(device))
        else:
            uncond = self.encoder.null(B, device=device)
        return cond, uncond

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one image's unit-Gaussian starting noise (what interpolation blends)."""
        return (self.config.channels, self.config.resolution, self.config.resolution)

    def _initial_noise(self, request, gens: list[torch.Generator]) -> Tensor:
        """Row i from ``gens[i]`` (seeded with seeds[i]), unless the request brings its own."""
        noise = torch.stack([torch.randn(self.noise_shape, generator=g) for g in gens])
        return noise if getattr(request, "noise", None) is None else request.noise.to(noise.dtype)


def build_backbone(kind: str, config: dict[str, Any]) -> nn.Module:
    """The denoiser's network F from its saved config: a U-Net or a DiT (same call)."""
    if kind == "dit":
        return DiT(DiTConfig.from_dict(config))
    return UNet(UNetConfig.from_dict(config))


def sampling_sigma_max(cfg: DiffusionConfig, request: Any) -> float:
    """The noise level sampling starts from: the request's ``sigma_max`` when given (checked
    against the run's sigma_min), else the run's."""
    value = getattr(request, "sigma_max", None)
    if value is None:
        return cfg.sigma_max
    value = float(value)
    if not math.isfinite(value) or value <= cfg.sigma_min:
        raise UsageError(f"sigma_max must be a finite number above the run's sigma_min ({cfg.sigma_min}), "
                         f"got {value}")
    return value


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float images -> uint8 [B, C, H, W] on the CPU."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
