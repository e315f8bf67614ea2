"""The explain hooks of the built-in families (diffusion, latent diffusion, GAN, VAE, and the
token transformers MaskGIT and autoregressive).

Each reads the calls the family's real ``train_step`` made (``step_panels``), names the levels
of its network (``feature_probe``; the token families' is in ``tokens.py``) and points at its
dynamics view (the token families' is in ``token_dynamics.py``). See ``hooks.py`` for the
protocol; nothing here changes how a family trains or samples.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from limner.conditioning import CondKind
from limner.data.batch import Batch
from limner.explain.hooks import (
    FamilyHooks, FeatureProbe, NetCall, Panel, channel_mean, register_hooks, upsample_to,
)

FEATURE_SIGMA = 0.2  # noise level the denoiser sees in the feature view (light noise)


def _calls(calls: list[NetCall], name: str) -> list[NetCall]:
    return [c for c in calls if c.name == name]


def _cat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.detach() for t in tensors]) if tensors else torch.empty(0)


def _null_condition(encoder: Any, B: int, device: torch.device):
    """The learned null condition (what CFG calls unconditional); empty for unconditional runs."""
    from limner.conditioning.base import Conditioning

    return Conditioning.empty(B) if encoder.kind == CondKind.none else encoder.null(B, device)


# ---------------------------------------------------------------------------------------------
# Diffusion
# ---------------------------------------------------------------------------------------------


class DiffusionHooks(FamilyHooks):
    """EDM diffusion: y + sigma n in, D(y + sigma n; sigma) out, lambda(sigma) |D - y|^2 per pixel."""

    def clean_targets(self, family: Any, batch: Batch) -> Tensor:
        """What the denoiser learns to output for ``batch`` (pixels here, latents in LDM)."""
        return batch.images

    def to_pixels(self, family: Any, x: Tensor) -> Tensor:
        """Denoiser space -> pixels in [-1, 1] (identity for pixel diffusion)."""
        return x

    def step_panels(self, family: Any, batch: Batch, calls: list[NetCall]) -> list[Panel]:
        model_calls = _calls(calls, "model")
        noisy = _cat([c.args[0] for c in model_calls])
        sigma = _cat([c.args[1].reshape(-1) for c in model_calls]).float()
        pred = _cat([c.output for c in model_calls]).float()
        y = self.clean_targets(family, batch).detach().float()
        sd = family.diffusion.config.sigma_data if hasattr(family, "diffusion") else family.config.sigma_data
        weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
        loss_map = weight.view(-1, 1, 1, 1) * channel_mean((pred - y) ** 2)  # [B, 1, h, w]
        notes = [f"sigma {s:.2g}" for s in sigma.tolist()]
        size = batch.images.shape[-1]
        per_image = [f"{v:.3g}" for v in loss_map.flatten(1).mean(1).tolist()]
        return [
            Panel("input", "image", batch.images.detach(), what="the training batch (x)"),
            Panel("noise added", "raw", upsample_to(noisy - y, size) if noisy.shape[-1] != size
                  else noisy - y, notes,
                  what="sigma n: Gaussian noise at a random level sigma (EDM's log-normal draw)"),
            Panel("noisy input", "image", self.to_pixels(family, noisy), notes,
                  what="x + sigma n, what the network sees"),
            Panel("prediction", "image", self.to_pixels(family, pred),
                  what="D(x + sigma n; sigma): the network's guess of the clean image"),
            Panel("loss per pixel", "heat", upsample_to(loss_map, size), per_image,
                  what="lambda(sigma) (D - x)^2 averaged over channels; its mean is the loss"),
        ]

    def feature_probe(self, family: Any) -> FeatureProbe:
        model = family.model if not hasattr(family, "diffusion") else family.diffusion.model
        u = model.backbone
        res = u.config.resolution
        levels: list[tuple[str, Any]] = [(f"input conv {res}px", u.conv_in)]
        for i, lvl in enumerate(u.encoder):
            last = lvl.attention[-1] if lvl.attention is not None else lvl.blocks[-1]
            levels.append((f"encoder {res >> i}px", last))
        deepest = len(u.encoder) - 1
        levels.append((f"middle {res >> deepest}px", u.middle.blocks[-1]))
        for j, lvl in enumerate(u.decoder):
            last = lvl.attention[-1] if lvl.attention is not None else lvl.blocks[-1]
            levels.append((f"decoder {res >> (deepest - j)}px", last))
        encoder = model.encoder

        def run(images: Tensor) -> Tensor:
            x = self.to_model_space(family, images)
            gen = torch.Generator().manual_seed(0)
            noise = torch.randn(x.shape, generator=gen).to(x.device)
            sigma = torch.full((x.shape[0],), FEATURE_SIGMA, device=x.device)
            return model(x + FEATURE_SIGMA * noise, sigma, _null_condition(encoder, len(x), x.device))

        return FeatureProbe(levels, run, what=f"the denoiser U-Net on the image with light noise "
                                              f"(sigma {FEATURE_SIGMA}) and the null condition")

    def to_model_space(self, family: Any, images: Tensor) -> Tensor:
        return images

    def dynamics(self, run: Any, **params: Any) -> Any:
        from limner.explain.dynamics import diffusion_dynamics

        return diffusion_dynamics(run, **params)


class LatentDiffusionHooks(DiffusionHooks):
    """Latent diffusion: the same denoiser on the frozen VAE's scaled latents, decoded to show."""

    def clean_targets(self, family: Any, batch: Batch) -> Tensor:
        return family.encode_batch(batch) * family.latent_space.scale

    def to_pixels(self, family: Any, x: Tensor) -> Tensor:
        return family.autoencoder.decode(x.detach() / family.latent_space.current_scale()).clamp(-1, 1)

    def to_model_space(self, family: Any, images: Tensor) -> Tensor:
        return family.autoencoder.encode(images) * family.latent_space.current_scale()


# ---------------------------------------------------------------------------------------------
# GAN
# ---------------------------------------------------------------------------------------------


class GANHooks(FamilyHooks):
    """GAN: D's logits on (augmented) reals and fakes, G's fakes and the push G's loss gives
    each pixel (the gradient of the G loss with respect to the generated image)."""

    def step_panels(self, family: Any, batch: Batch, calls: list[NetCall]) -> list[Panel]:
        d_calls, g_calls = _calls(calls, "D"), _calls(calls, "G")
        fake_in = _cat([c.args[0] for c in d_calls[0::2]])
        real_in = _cat([c.args[0] for c in d_calls[1::2]])
        fake_logits = _cat([c.output for c in d_calls[0::2]]).float()
        real_logits = _cat([c.output for c in d_calls[1::2]]).float()
        g_out = [c.output for c in g_calls]
        fakes = _cat(g_out)
        grads = [o.grad for o in g_out if o.grad is not None]
        panels = [
            Panel("input (real)", "image", batch.images.detach(), what="the training batch"),
            Panel("real, as D saw it", "image", real_in.clamp(-1, 1),
                  [f"D={v:+.2f}" for v in real_logits.tolist()],
                  what="augmented real images and D's logit (high = 'real')"),
            Panel("fake, as D saw it", "image", fake_in.clamp(-1, 1),
                  [f"D={v:+.2f}" for v in fake_logits.tolist()],
                  what="augmented fakes from G in D's update, and D's logit"),
            Panel("G's images", "image", fakes.clamp(-1, 1), what="G's output in its own update"),
        ]
        if grads:
            push = channel_mean(torch.cat(grads).abs()) * fakes.shape[1]
            panels.append(Panel("where G's loss pushes", "heat", push,
                                what="|dL_G / d pixel|: how strongly G's loss wants each pixel "
                                     "changed (through D)"))
        return panels

    def feature_probe(self, family: Any) -> FeatureProbe:
        D = family.D
        levels = [("from RGB", D.from_rgb)]
        side = family.config.resolution
        for block in D.blocks:
            side //= 2
            levels.append((f"block {side}px", block))
        levels.append((f"last conv {side}px", D.conv))

        def run(images: Tensor) -> Tensor:
            inputs = None
            if D.project is not None:  # the condition enters after every feature level
                kind = family.cond_kind
                inputs = family.encoder.prepare(
                    captions=[""] * len(images) if kind == CondKind.text else None,
                    labels=[0] * len(images) if kind == CondKind.class_ else None,
                    batch_size=len(images)).to(images.device)
            return D(images, inputs)

        return FeatureProbe(levels, run, what="the discriminator D on the image")

    def dynamics(self, run: Any, **params: Any) -> Any:
        from limner.explain.dynamics import gan_dynamics

        return gan_dynamics(run, **params)


# ---------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------


class VAEHooks(FamilyHooks):
    """VAE: the reconstruction, its per-pixel error and the KL of each latent position."""

    def step_panels(self, family: Any, batch: Batch, calls: list[NetCall]) -> list[Panel]:
        outs = [c.output for c in _calls(calls, "model")]
        recon = _cat([o.recon for o in outs]).float()
        x = batch.images.detach().float()
        diff = recon - x
        err = diff.square() if family.config.recon_loss == "mse" else diff.abs()
        size = x.shape[-1]
        panels = [
            Panel("input", "image", x, what="the training batch"),
            Panel("reconstruction", "image", recon.clamp(-1, 1),
                  what="decoder(z), z = mu + sigma eps drawn from q(z | x)"),
            Panel("loss per pixel", "heat", channel_mean(err),
                  [f"{v:.3g}" for v in channel_mean(err).flatten(1).mean(1).tolist()],
                  what=f"reconstruction error ({family.config.recon_loss}) averaged over channels"),
        ]
        if outs and outs[0].mu is not None:
            mu, logvar = _cat([o.mu for o in outs]).float(), _cat([o.logvar for o in outs]).float()
            kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1, keepdim=True)
            panels.append(Panel("KL per latent position", "heat", upsample_to(kl, size),
                                [f"{v:.3g}" for v in kl.flatten(1).sum(1).tolist()],
                                what="KL(q(z|x) || N(0, I)) at each latent position (nats)"))
        if outs and outs[0].quant is not None:
            codes = _cat([o.quant.indices for o in outs]).float()[:, None]
            panels.append(Panel("codes", "raw", upsample_to(codes, size),
                                what="the codebook index chosen at each latent position"))
        return panels

    def feature_probe(self, family: Any) -> FeatureProbe:
        enc = family.model.encoder
        res = family.config.resolution
        levels = [(f"input conv {res}px", enc.conv_in)]
        for i, stage in enumerate(enc.blocks):
            levels.append((f"level {i} {res >> i}px", stage[-1]))
        levels.append((f"middle {res >> (len(enc.blocks) - 1)}px", enc.mid))

        def run(images: Tensor) -> Tensor:
            vector, context = family.model.condition(None, len(images))
            return enc(images, vector, context)

        return FeatureProbe(levels, run, what="the VAE's image encoder (null condition)")

    def dynamics(self, run: Any, **params: Any) -> Any:
        from limner.explain.dynamics import vae_dynamics

        return vae_dynamics(run, **params)


# ---------------------------------------------------------------------------------------------
# Token transformers (MaskGIT, autoregressive) over a frozen VQ-VAE's codes
# ---------------------------------------------------------------------------------------------


class TokenHooks(FamilyHooks):
    """Token models: the tokens the transformer saw, its predicted codes (decoded by the VQ-VAE)
    and the cross-entropy at each position. Needs the family's ``encode_batch``, ``decode``,
    ``config.grid`` and ``model.net.special`` (the [MASK] / start code)."""

    def _grid(self, family: Any, x: Tensor, size: int) -> Tensor:
        g = family.config.grid
        return upsample_to(x.float().reshape(-1, 1, g, g), size)

    def _loss_positions(self, family: Any, inp: Tensor) -> Tensor:
        """[B, N] bool: where the loss is taken."""
        raise NotImplementedError

    def step_panels(self, family: Any, batch: Batch, calls: list[NetCall]) -> list[Panel]:
        model_calls = _calls(calls, "model")
        inp = _cat([c.args[0] for c in model_calls])
        logits = _cat([c.output for c in model_calls]).float()  # [B, N, K]
        targets = family.encode_batch(batch)
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        where = self._loss_positions(family, inp)
        size = batch.images.shape[-1]
        panels = [Panel("input", "image", batch.images.detach(), what="the training batch"),
                  Panel("tokens", "image", family.decode(targets).clamp(-1, 1),
                        what="the VQ-VAE's codes of the batch, decoded")]
        panels += self._extra_panels(family, inp, size)
        panels += [
            Panel("prediction", "image", family.decode(logits.argmax(-1)).clamp(-1, 1),
                  what="the likeliest code at every position, decoded"),
            Panel("loss per token", "heat", self._grid(family, ce * where, size),
                  [f"{v:.3g}" for v in ((ce * where).sum(1) / where.sum(1).clamp(min=1)).tolist()],
                  what="cross-entropy of the true code at each position where the loss is taken"),
        ]
        return panels

    def _extra_panels(self, family: Any, inp: Tensor, size: int) -> list[Panel]:
        return []

    def feature_probe(self, family: Any) -> FeatureProbe:
        from limner.explain.tokens import token_feature_probe

        return token_feature_probe(family)

    def prompt_attention(self, run: Any, family: Any, step: int, prompt: str | None, seed: int) -> Any:
        from limner.explain.token_dynamics import attention_result

        return attention_result(run, family, step, prompt, seed)


class MaskedTokenHooks(TokenHooks):
    """MaskGIT: the loss is on the masked positions; the sampler unmasks a few per step."""

    def _loss_positions(self, family: Any, inp: Tensor) -> Tensor:
        return inp == family.model.net.special

    def _extra_panels(self, family: Any, inp: Tensor, size: int) -> list[Panel]:
        masked = (inp == family.model.net.special).float()
        return [Panel("mask", "heat", self._grid(family, masked, size),
                      [f"{v:.0%}" for v in masked.mean(1).tolist()],
                      what="the positions replaced by [MASK] (bright), a cosine-scheduled share")]

    def token_mask(self, family: Any, info: dict[str, Any]) -> Tensor | None:
        tokens = info.get("tokens")
        if not isinstance(tokens, Tensor):
            return None
        g = family.config.grid
        return (tokens == family.model.net.special).reshape(-1, g, g)

    def dynamics(self, run: Any, **params: Any) -> Any:
        from limner.explain.token_dynamics import maskgit_dynamics

        return maskgit_dynamics(run, **params)


class CausalTokenHooks(TokenHooks):
    """Autoregressive: every position predicts the next code (teacher forcing); the sampler
    fills positions in raster order."""

    def _loss_positions(self, family: Any, inp: Tensor) -> Tensor:
        return torch.ones_like(inp, dtype=torch.bool)

    def token_mask(self, family: Any, info: dict[str, Any]) -> Tensor | None:
        tokens = info.get("tokens")
        if not isinstance(tokens, Tensor):
            return None
        g = family.config.grid
        done = torch.arange(g * g, device=tokens.device) < tokens.shape[1]
        return (~done).expand(tokens.shape[0], -1).reshape(-1, g, g)

    def dynamics(self, run: Any, **params: Any) -> Any:
        from limner.explain.token_dynamics import autoregressive_dynamics

        return autoregressive_dynamics(run, **params)


register_hooks("diffusion", DiffusionHooks())
register_hooks("latent-diffusion", LatentDiffusionHooks())
register_hooks("gan", GANHooks())
register_hooks("vae", VAEHooks())
register_hooks("maskgit", MaskedTokenHooks())
register_hooks("autoregressive", CausalTokenHooks())
