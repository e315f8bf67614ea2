"""The latent-diffusion family: the pixel diffusion family's model trained on the latents of a
trained, frozen VAE, and decoded by it at sampling time.

Rombach, Blattmann, Lorenz, Esser, Ommer, "High-Resolution Image Synthesis with Latent
Diffusion Models" (CVPR 2022): a perceptually trained autoencoder maps images to a smaller
latent grid; the diffusion model learns that grid; latents are scaled by 1 / std of the first
training batch's latents so that they have unit variance (the paper's appendix on its
autoencoders: the rescaled KL-regularised latent space). The denoiser, its EDM preconditioning and loss
(Karras et al. 2022), conditioning, condition dropout, classifier-free guidance (Ho & Salimans
2022), negative prompts and every sampler are the pixel family's, reused by composition.

Design (see also ``LatentSpace`` and ``LatentDiffusionFamily.encode_batch``):

* The autoencoder is **copied** into the run. ``create`` loads the VAE run's EMA weights once,
  records its path, run id, step and model hash in the config (provenance), and makes the frozen
  autoencoder a module of this family (``"vae"``), so every checkpoint holds
  ``vae.safetensors`` and the run folder alone is enough to sample or resume; the VAE run
  folder can later change or disappear. The VAE has no optimizer and no EMA copy.
* The **scale factor** is a buffer of the ``"vae"`` module, 0 until the first training step
  sets it to 1 / std of that batch's latents (over all ranks under DDP), as in Rombach et al.'s
  ``scale_by_std``. It is saved with the weights, so a resumed run reads it back instead of
  re-estimating it and resume stays bitwise.
* **Latents are encoded once and cached** in memory, keyed by dataset index and a digest of the
  image (so an image and its horizontal flip are two entries). Each image is encoded on its own
  (batch of one), which makes its latent independent of the batch it first appeared in: the
  cache is a pure function of the images and a resumed process refills it bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from limner.conditioning import CondKind
from limner.data.batch import Batch
from limner.errors import CheckpointError, UsageError
from limner.models.base import DataInfo, FamilyBase, GenerationOutput, OptimizerSpec, ProgressCallback, StepContext
from limner.models.diffusion.config import PRESETS, DiffusionConfig, get_preset
from limner.models.declaration import Capability, FamilyDeclaration, RunNeed, preset_lines
from limner.models.diffusion.family import DIFFUSION_OPTIONS, DiffusionFamily, sampling_sigma_max, to_uint8
from limner.models.latent_diffusion.config import LATENT_SIGMA_DATA, LatentDiffusionConfig
from limner.models.vae.family import VAEFamily
from limner.samplers import CFGDenoiser, sample

__all__ = ["LatentDiffusionFamily", "LatentSpace"]


# ---------------------------------------------------------------------------------------------
# The frozen latent space
# ---------------------------------------------------------------------------------------------


class LatentSpace(nn.Module):
    """The frozen autoencoder plus the latent scale factor, saved as ``vae.safetensors``.

    Args:
        autoencoder: the VAE network (``limner.models.vae.family.VAE``); frozen here.
    Buffers:
        scale: 1 / std of the latents (Rombach et al. 2022); 0 means "not estimated yet".
    """

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder.requires_grad_(False)
        self.register_buffer("scale", torch.zeros(()))

    @property
    def calibrated(self) -> bool:
        return bool(self.scale != 0)

    @torch.no_grad()
    def calibrate(self, latents: Tensor) -> None:
        """Set ``scale`` to 1 / std of ``latents`` [B, C_z, h, w], pooled over DDP ranks."""
        z = latents.detach().double()
        stats = torch.stack([torch.tensor(float(z.numel()), dtype=torch.float64, device=z.device),
                             z.sum(), (z * z).sum()])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)  # every rank gets the same scale
        n, total, squares = stats.tolist()
        var = (squares - total * total / n) / max(n - 1.0, 1.0)
        self.scale.fill_(1.0 / math.sqrt(var) if var > 0 else 1.0)

    def current_scale(self) -> Tensor:
        """``scale``, or 1 before calibration (an untrained model samples noise either way)."""
        return self.scale if self.calibrated else torch.ones_like(self.scale)


# ---------------------------------------------------------------------------------------------
# The family plug-in
# ---------------------------------------------------------------------------------------------


class LatentDiffusionFamily(FamilyBase):
    """Family plug-in for latent diffusion (see ``limner.models.base.Family``).

    ``diffusion`` is a pixel ``DiffusionFamily`` configured for latent tensors [C_z, h, w];
    ``autoencoder`` the frozen ``VAEFamily`` whose network lives in ``latent_space``.
    """

    name: ClassVar[str] = "latent-diffusion"
    declaration: ClassVar[FamilyDeclaration] = FamilyDeclaration(
        summary="EDM diffusion on the latents of a trained VAE run (Rombach et al. 2022)",
        options=DIFFUSION_OPTIONS,
        needs=(RunNeed("vae", "vae", "a VAE run trained with --cond none: its latent space is learned "
                       "and its weights are copied into the new run",
                       train_args=("--preset", "{size}", "--cond", "none"), provenance="vae_run"),),
        capabilities=frozenset({Capability.negative_prompt, Capability.interpolate,
                                Capability.img2img, Capability.inpaint}),
        presets=preset_lines(PRESETS),
    )
    # Config fields ``overrides`` may not set (``diffusion.*`` it may, see ``create``).
    fixed_settings: ClassVar[dict[str, str]] = {
        "preset": "use --preset",
        "resolution": "follows the --vae run",
        "channels": "follows the --vae run",
        "vae": "a frozen copy of the --vae run; train another VAE run to change it",
        "vae_run": "follows --vae",
    }

    def __init__(self, config: LatentDiffusionConfig, *, diffusion: DiffusionFamily | None = None):
        self.config = config
        self.diffusion = diffusion or DiffusionFamily(DiffusionConfig.from_dict(config.diffusion))
        # The frozen copy never trains, so no discriminator is built for it.
        self.autoencoder = VAEFamily.from_config({**config.vae, "adversarial": False})
        self.latent_space = LatentSpace(self.autoencoder.model)
        self._cache: dict[tuple[int, bytes], Tensor] = {}

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
        vae: str | Path | None = None,
    ) -> "LatentDiffusionFamily":
        """A new model on the latent space of the VAE run ``vae`` (its EMA weights are copied).

        Args:
            preset: a diffusion preset (tiny, small, base), applied to the latent grid.
            data: the training data; its resolution and channels must be the VAE's.
            cond: condition of the diffusion model (the VAE itself must be unconditional).
            overrides: config fields as saved in ``config.json``: ``{"diffusion": {...}}`` sets
                the latent denoiser's ``DiffusionConfig`` fields at any depth (``sigma_data``
                defaults to 1.0 here); the rest is fixed (``fixed_settings``).
            vae: the VAE run folder (``--vae RUN_DIR``).
        """
        get_preset(preset)  # a clear --preset error before the VAE is loaded
        overrides = dict(overrides or {})
        if "backbone" in overrides:  # --set family.backbone=dit, as for pixel diffusion
            overrides["diffusion"] = {**overrides.get("diffusion", {}), "backbone": overrides.pop("backbone")}
        for name in overrides:
            if name != "diffusion":
                why = cls.fixed_settings.get(name)
                raise UsageError(f"--set family.{name}: " + (f"not settable ({why})" if why else
                                 f"unknown setting {name!r} (settable: family.diffusion.NAME)"))
        diffusion_overrides = overrides.get("diffusion", {})
        if not isinstance(diffusion_overrides, dict):
            raise UsageError("--set family.diffusion: is a group of settings; set its fields "
                             "(family.diffusion.NAME=...)")
        source = _load_vae_run(vae)
        vae_cfg = source.family.config
        _check_vae_fits(vae_cfg, data)
        C_z, h, _ = source.family.latent_shape
        latent_data = replace(data, resolution=h, channels=C_z)
        diffusion = DiffusionFamily.create(
            preset, latent_data, cond, text_encoder=text_encoder,
            overrides={"sigma_data": LATENT_SIGMA_DATA, **diffusion_overrides},
            overrides_where="family.diffusion",
        )
        _check_unet_fits(diffusion, h)
        cfg = LatentDiffusionConfig(
            preset=preset, resolution=vae_cfg.resolution, channels=vae_cfg.channels,
            diffusion=diffusion.config.to_dict(), vae=vae_cfg.to_dict(),
            vae_run={"path": str(Path(vae).resolve()), "run_id": source.run_id,
                     "step": source.step, "model_hash": source.model_hash},
        )
        family = cls(cfg, diffusion=diffusion)
        family.autoencoder.model.load_state_dict(source.family.model.state_dict())
        return family

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> "LatentDiffusionFamily":
        """Rebuild from the dict saved in a run's config.json (weights come from a checkpoint)."""
        return cls(LatentDiffusionConfig.from_dict(data))

    @staticmethod
    def train_defaults(preset: str) -> dict[str, Any]:
        """TrainConfig defaults that go with a preset (the diffusion family's)."""
        return DiffusionFamily.train_defaults(preset)

    # ----------------------------------------------------------------- plug-in surface
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.diffusion.model, "vae": self.latent_space}

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return self.diffusion.optimizers()  # the denoiser's trainable parameters only

    def option_defaults(self) -> dict[str, Any]:
        return self.diffusion.option_defaults()

    @property
    def cond_kind(self) -> CondKind:
        return self.diffusion.cond_kind

    @property
    def encoder(self) -> nn.Module:
        """The condition encoder (labels by name, prompts)."""
        return self.diffusion.encoder

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C_z, h, w) of one image's latent."""
        return self.autoencoder.latent_shape

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one image's starting noise, in latent space (what interpolation blends)."""
        return self.diffusion.noise_shape

    # ----------------------------------------------------------------- training
    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """Encode (cached), scale, then the pixel family's EDM step on the latents."""
        z = self.encode_batch(batch)
        if not self.latent_space.calibrated:
            self.latent_space.calibrate(z)
        latents = Batch(images=z * self.latent_space.scale, indices=batch.indices,
                        captions=batch.captions, labels=batch.labels)
        metrics = self.diffusion.train_step(latents, ctx)
        return {**metrics, "latent_scale": float(self.latent_space.scale)}

    def encode_batch(self, batch: Batch) -> Tensor:
        """Unscaled latents [B, C_z, h, w] of ``batch.images``, encoding only unseen images.

        Each miss is encoded alone so its latent does not depend on the batch it came in.
        """
        pixels = batch.images.detach().to("cpu", torch.float32)  # one transfer for the digests
        rows = []
        for i, index in enumerate(batch.indices.tolist()):
            key = (int(index), _digest(pixels[i]))
            z = self._cache.get(key)
            if z is None:
                z = self.autoencoder.encode(batch.images[i : i + 1])[0].to("cpu", torch.float32)
                self._cache[key] = z
            rows.append(z)
        return torch.stack(rows).to(batch.images.device)

    @property
    def cache_size(self) -> int:
        """Latents held in the cache (one per image, and per flip when flips are on)."""
        return len(self._cache)

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, request, *, callback: ProgressCallback | None = None) -> GenerationOutput:
        """Sample latents like the pixel family (per-image seeded noise, condition, CFG, negative
        prompt, chosen sampler), unscale them and decode them with the VAE."""
        scale = self.latent_space.current_scale()
        z = self._sample_latents(request, self._pixel_callback(callback, scale))
        images = self.autoencoder.decode(z / scale.to(z.device))
        return GenerationOutput(images=to_uint8(images), seeds=list(request.seeds),
                                extra={"latent_shape": list(self.latent_shape)})

    def _sample_latents(self, request, callback: ProgressCallback | None) -> Tensor:
        """Scaled latents [B, C_z, h, w]; image i's noise from ``Generator().manual_seed(seeds[i])``
        unless the request brings its own (interpolation)."""
        cfg = self.diffusion.config
        model = self.diffusion.model
        device = next(model.parameters()).device
        B = len(request.seeds)
        cond, uncond = self.diffusion._encode_request(request, B, device)
        w = cfg.cfg if request.cfg is None else request.cfg
        denoiser = model if uncond is None or w == 1.0 else CFGDenoiser(model, uncond, w)
        gens = [torch.Generator().manual_seed(int(s)) for s in request.seeds]
        noise = self.diffusion._initial_noise(request, gens).to(device)  # or request.noise
        was_training = model.training
        model.eval()
        try:
            if getattr(request, "init", None) is not None:  # image-to-image / inpainting
                return self._edit_latents(denoiser, cond, request, gens, callback)
            return sample(
                denoiser, noise, cond,
                sampler=request.sampler or cfg.sampler, steps=request.steps or cfg.steps,
                sigma_min=cfg.sigma_min, sigma_max=sampling_sigma_max(cfg, request), schedule=cfg.schedule,
                generator=gens, callback=callback,
            )
        finally:
            model.train(was_training)

    def _edit_latents(self, denoiser, cond, request, gens, callback) -> Tensor:
        """The input encoded and scaled, then the pixel family's SDEdit/RePaint on the latents;
        the mask is max-pooled to the latent grid (the final pixel composite is the caller's)."""
        from limner.samplers.editing import latent_mask

        device = next(self.diffusion.model.parameters()).device
        scale = self.latent_space.current_scale().to(device)
        z0 = self.autoencoder.encode(request.init.to(device).float() / 127.5 - 1.0) * scale
        mask = request.mask
        if mask is not None:
            mask = latent_mask(mask.to(device), request.init.shape[-1] // z0.shape[-1])
        return self.diffusion.edit(denoiser, cond, request, z0, mask, gens, callback)

    def _pixel_callback(self, callback: ProgressCallback | None, scale: Tensor
                        ) -> ProgressCallback | None:
        """Previews in pixel space: ``x`` and ``denoised`` decoded (latents kept as ``z_*``)."""
        if callback is None:
            return None

        def decoded(info: dict[str, Any]) -> None:
            s = scale.to(info["x"].device)
            callback({**info, "z_x": info["x"], "z_denoised": info["denoised"],
                      "x": self.autoencoder.decode(info["x"] / s),
                      "denoised": self.autoencoder.decode(info["denoised"] / s)})

        return decoded


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _load_vae_run(path: str | Path | None):
    """``load_run`` of the VAE run (EMA weights, CPU); errors name ``--vae``."""
    if path is None:
        raise UsageError("--family latent-diffusion needs --vae RUN_DIR: a VAE run trained with "
                         "`limner train DATA --family vae --cond none`")
    # Reading another run folder is the generation pipeline's job; imported here because models
    # sit below generation in the package layering and only ``create`` needs it.
    from limner.generation.pipeline import load_run

    try:
        loaded = load_run(path, device="cpu")
    except (UsageError, CheckpointError) as e:
        raise type(e)(f"--vae: {e}") from None
    if loaded.family.name != VAEFamily.name:
        raise UsageError(f"--vae: {path} is a {loaded.family.name!r} run; latent diffusion needs "
                         "a 'vae' run (limner train DATA --family vae --cond none)")
    if loaded.family.cond_kind != CondKind.none:
        raise UsageError(f"--vae: {path} is a conditional VAE (--cond {loaded.family.cond_kind.value}); "
                         "latent diffusion needs an unconditional latent space: train the VAE "
                         "with --cond none")
    return loaded


def _check_vae_fits(vae_cfg, data: DataInfo) -> None:
    """The data must be at the VAE's resolution and channel count."""
    if data.resolution != vae_cfg.resolution:
        raise UsageError(f"--resolution {data.resolution} differs from the --vae run's resolution "
                         f"{vae_cfg.resolution}; train at --resolution {vae_cfg.resolution}")
    if data.channels != vae_cfg.channels:
        raise UsageError(f"the data has {data.channels} channel(s), the --vae run "
                         f"{vae_cfg.channels}; use data of the kind the VAE was trained on")


def _check_unet_fits(diffusion: DiffusionFamily, side: int) -> None:
    """The U-Net halves the latent grid (levels - 1) times (a DiT checks its patch size itself)."""
    if diffusion.config.backbone != "unet":
        return
    levels = len(diffusion.config.net["channels"])
    factor = 2 ** (levels - 1)
    if side % factor:
        raise UsageError(f"--preset {diffusion.config.preset}: its U-Net needs a latent grid "
                         f"divisible by {factor}, the --vae latents are {side}x{side}; use a "
                         "smaller preset or a VAE with fewer downsampling levels")


def _digest(image: Tensor) -> bytes:
    """A short digest of one CPU image's exact values (tells an image from its flip)."""
    return hashlib.blake2b(image.contiguous().numpy().tobytes(), digest_size=16).digest()
