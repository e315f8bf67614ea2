"""The family registry: one line per family. The trainer, CLI and studio look families up here
and never import a family module directly."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from limner.errors import UsageError

if TYPE_CHECKING:
    from limner.models.declaration import FamilyDeclaration

FAMILIES: dict[str, str] = {
    "diffusion": "limner.models.diffusion.family:DiffusionFamily",
    "gan": "limner.models.gan.family:GANFamily",
    "vae": "limner.models.vae.family:VAEFamily",
    "latent-diffusion": "limner.models.latent_diffusion.family:LatentDiffusionFamily",
    "maskgit": "limner.models.transformer.family:MaskGITFamily",
    "autoregressive": "limner.models.transformer.family:AutoregressiveFamily",
}

DEFAULT_FAMILY = "diffusion"  # what ``limner train`` builds without --family


def family_class(name: str) -> Any:
    """The family class registered under ``name`` (``--family`` values)."""
    try:
        target = FAMILIES[name]
    except KeyError:
        raise UsageError(
            f"--family: unknown family {name!r} (choose from {', '.join(sorted(FAMILIES))})"
        ) from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def declaration(name: str) -> "FamilyDeclaration":
    """What the family ``name`` offers (options, runs it needs, capabilities)."""
    return family_class(name).declaration


def declarations() -> dict[str, "FamilyDeclaration"]:
    """Every registered family's declaration, by name (the CLI's choices, the studio's model list)."""
    return {name: declaration(name) for name in FAMILIES}
