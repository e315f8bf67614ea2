"""Configuration of the latent-diffusion family.

A latent-diffusion run composes two saved configs: the pixel diffusion family's
``DiffusionConfig`` (resolved for latent tensors: ``channels`` = C_z, ``resolution`` = h) and
the frozen autoencoder's ``VAEConfig``, plus where that autoencoder came from. Presets are the
diffusion presets (``tiny``, ``small``, ``base``), applied to the latent grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from limner.errors import UsageError

# EDM's sigma_data is the standard deviation of the data; latents are scaled to unit variance
# (Rombach et al. 2022), so 1.0 rather than the 0.5 of images in [-1, 1].
LATENT_SIGMA_DATA = 1.0


@dataclass
class LatentDiffusionConfig:
    """Resolved configuration of a latent-diffusion model (``config.json`` under "family").

    Attributes:
        preset: the diffusion preset it was built from (for display).
        resolution, channels: pixel size and channel count of the images (the VAE's).
        diffusion: ``DiffusionConfig`` as a dict, over latents [C_z, h, w].
        vae: the frozen autoencoder's ``VAEConfig`` as a dict (its weights are saved with every
            checkpoint as ``vae.safetensors``, so this run folder alone is enough to sample).
        vae_run: provenance of the autoencoder: ``path`` (absolute), ``run_id``, ``step`` and
            ``model_hash`` of the VAE run it was copied from at creation.
    """

    preset: str
    resolution: int
    channels: int
    diffusion: dict[str, Any]
    vae: dict[str, Any]
    vae_run: dict[str, Any]

    # The generation pipeline records the resolved sampling defaults from ``family.config``.
    @property
    def sampler(self) -> str:
        return self.diffusion["sampler"]

    @property
    def steps(self) -> int:
        return self.diffusion["steps"]

    @property
    def cfg(self) -> float:
        return self.diffusion["cfg"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatentDiffusionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown latent-diffusion config key(s): {', '.join(unknown)}")
        missing = sorted(known - set(data))
        if missing:
            raise UsageError(f"latent-diffusion config lacks key(s): {', '.join(missing)}")
        return cls(**data)
