"""What the views need to know about a model family: a small protocol with generic defaults.

The views never test a family's name. They ask :func:`hooks_for` for the family's
:class:`FamilyHooks`, which says

- ``step_panels``: how to read the network calls recorded during one real training step
  (input, the noise or mask added, the prediction, the per-pixel loss);
- ``feature_probe``: which network to open up for the feature hierarchy, its levels, and how to
  run it on images;
- ``film_frames``: which pictures a sampler callback carries at each step (x_t and the predicted
  clean image for diffusion; a token family adds its mask);
- ``dynamics``: the family's own training dynamics (GAN: D's view of real and fake; VAE: the
  latent space), or None.

A family supplies its hooks either by a method ``explain_hooks()`` returning a ``FamilyHooks``,
or by ``register_hooks(name, hooks)`` (this module does so for the built-in families). A family
with neither gets the defaults, which work from what every family has: ``generate`` with a
per-step callback, ``modules()``, and the calls its ``train_step`` makes through ``ctx.net``.

Token models (MaskGIT / autoregressive) plug in the same way: ``step_panels`` returns a "mask"
panel ([B, 1, H, W], 1 = masked) and their sampler callback passes ``info["mask"]`` ([B, h, w]
bool, True = still masked), from which the filmstrip draws the order tokens were unmasked in.
Their ``feature_probe`` (``tokens.py``) names the transformer's blocks as levels, with
``to_maps`` laying each block's hidden states [B, L, D] out on the token grid and
``attention_blocks`` for the per-token self-attention; their ``dynamics`` and
``prompt_attention`` (the "attention" view: the prompt is read through joint self-attention,
not cross-attention) are in ``token_dynamics.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from limner.data.batch import Batch

PanelKind = Literal["image", "heat", "signed", "raw"]


@dataclass
class NetCall:
    """One forward call a family step made through ``ctx.net(name)``."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any


@dataclass
class Panel:
    """One row of the opened-up training step.

    Attributes:
        name: short title ("input", "noise added", ...).
        kind: "image" (values in [-1, 1]), "heat" (non-negative map), "signed" (diverging) or
            "raw" (stretched to its own range: noise, latents).
        values: [B, C, H, W] (C = 1 or 3; maps are C = 1).
        notes: one short string per image (e.g. its sigma), or None.
        what: one sentence on what the row shows.
    """

    name: str
    kind: PanelKind
    values: Tensor
    notes: list[str] | None = None
    what: str = ""


@dataclass
class FeatureProbe:
    """A network opened up for the feature hierarchy.

    Attributes:
        levels: (name, module) in forward order; each module's output is one level's maps.
        run: runs the network on images [B, C, H, W] in [-1, 1] (the hooks capture the levels).
        what: one sentence on what network this is and how it is fed.
        to_maps: turns a level's output into maps [B, C, h, w] (None: it already is; a token
            transformer's hidden states [B, L, D] are laid out on its token grid).
        default_level: the level searched for patches when none is chosen (None: the view's
            default, the deepest encoder-side level).
        token_grid: side of the token grid when each map position is one token of a VQ
            tokenizer (the patches then outline the token's own patch of the image).
        attention_blocks: (level name, block) whose self-attention the view shows for one
            token (``limner.explain.tokens.capture_self_attention``); empty for conv nets.
        search: training images searched for a channel's patches by default (each is a full
            forward pass; a token model's image offers a candidate at every one of its tokens,
            so it searches fewer).
    """

    levels: list[tuple[str, nn.Module]]
    run: Callable[[Tensor], Any]
    what: str = ""
    to_maps: Callable[[Tensor], Tensor] | None = None
    default_level: str | None = None
    token_grid: int | None = None
    attention_blocks: list[tuple[str, nn.Module]] = field(default_factory=list)
    search: int = 256


class FamilyHooks:
    """Generic behaviour; a family overrides what it knows better (see the module docstring)."""

    def step_panels(self, family: Any, batch: Batch, calls: list[NetCall]) -> list[Panel]:
        """Panels of one training step: by default the input and every image-shaped output."""
        panels = [Panel("input", "image", batch.images.detach(), what="the training batch")]
        for call in calls:
            out = call.output
            if isinstance(out, Tensor) and out.dim() == 4 and out.shape[0] == len(batch):
                panels.append(Panel(f"{call.name} output", "raw", out.detach()))
        return panels

    def feature_probe(self, family: Any) -> FeatureProbe | None:
        """No probe by default (the feature view then says which families have one)."""
        return None

    def film_frames(self, family: Any, info: dict[str, Any]) -> dict[str, Tensor]:
        """Pictures of one sampler step: ``x`` (x_t) and ``denoised`` (predicted clean image)."""
        out = {}
        if isinstance(info.get("x"), Tensor) and info["x"].dim() == 4:
            out["x_t"] = info["x"]
        if isinstance(info.get("denoised"), Tensor) and info["denoised"].dim() == 4:
            out["predicted x0"] = info["denoised"]
        return out

    def token_mask(self, family: Any, info: dict[str, Any]) -> Tensor | None:
        """Token samplers: [B, h, w] bool, True where a position is still masked after this
        step (the filmstrip's unmasking order); ``info["mask"]`` when the sampler passes it."""
        mask = info.get("mask")
        return mask if isinstance(mask, Tensor) else None

    def dynamics(self, run: Any, **params: Any) -> Any:
        """The family's own dynamics view (an ``ExplainResult``), or None."""
        return None

    def prompt_attention(self, run: Any, family: Any, step: int, prompt: str | None, seed: int) -> Any:
        """The "attention" view's result (an ``ExplainResult``) for a family whose prompt reaches
        the image some other way than cross-attention blocks, or None (the view then reads the
        family's ``Attention2d`` cross-attention)."""
        return None


HOOKS: dict[str, FamilyHooks] = {}


def register_hooks(family_name: str, hooks: FamilyHooks) -> None:
    """Use ``hooks`` for the family registered as ``family_name``."""
    HOOKS[family_name] = hooks


def hooks_for(family: Any) -> FamilyHooks:
    """The family's own ``explain_hooks()``, else the registered hooks, else the defaults."""
    own = getattr(family, "explain_hooks", None)
    if callable(own):
        return own()
    _load_builtin()
    return HOOKS.get(getattr(family, "name", ""), FamilyHooks())


def _load_builtin() -> None:
    from limner.explain import families  # noqa: F401  (registers the built-in families' hooks)


# ---------------------------------------------------------------------------------------------
# Small helpers the family hooks share
# ---------------------------------------------------------------------------------------------


def channel_mean(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, 1, H, W]."""
    return x.float().mean(dim=1, keepdim=True)


def upsample_to(x: Tensor, size: int) -> Tensor:
    """Nearest-neighbour resize of maps [B, C, h, w] to ``size`` x ``size``."""
    return x if x.shape[-1] == size else F.interpolate(x.float(), size=(size, size), mode="nearest")


def as_float_image(images: Tensor) -> Tensor:
    """uint8 [B, C, H, W] -> float in [-1, 1]; float input is returned unchanged."""
    return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images
