"""The VAE family: a convolutional autoencoder with a Gaussian (KL) or vector-quantized (VQ)
latent, optionally conditional, optionally with a VQGAN patch discriminator.

* KL variant: the encoder predicts the mean and log-variance of q(z | x) and the decoder sees
  z = mu + sigma * eps (the reparameterisation trick, Kingma & Welling 2014); the loss is the
  reconstruction error plus beta times the KL to N(0, I) (beta-VAE, Higgins et al. 2017) with an
  optional linear warm-up of beta (Bowman et al. 2016).
* VQ variant: the encoder output is snapped to the nearest code of a codebook (van den Oord et
  al. 2017; EMA codebook as in Razavi et al. 2019), see ``quantizer.py``. It is the tokenizer of
  the token transformer family.
* A conditioned run is a conditional VAE (Sohn et al. 2015): encoder and decoder both see the
  condition (class label or caption). Autoencoders meant as tokenizers or as latent space for
  latent diffusion are trained with ``--cond none``.
* ``adversarial`` adds a patch discriminator "D" with its own optimizer and an optional
  discriminator-feature loss (VQGAN, Esser et al. 2021).

Select the VQ variant with a ``vq-`` preset (``vq-tiny``, ``vq-small``, ``vq-base``) or, from
Python, ``VAEFamily.create(..., overrides={"variant": "vq"})``.

For latent diffusion and the token transformer the family exposes ``encode`` (images in
[-1, 1] → latents: the posterior mean for KL, the quantised codes for VQ), ``decode`` (latents →
images), ``latent_shape`` and, for VQ, ``encode_tokens`` / ``decode_tokens``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import MISSING, fields
from typing import Any, ClassVar, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from limner.conditioning import CondInputs, CondKind, EncoderConfig, build_encoder, resolve_encoder_config
from limner.data.batch import Batch
from limner.errors import UsageError
from limner.models.base import DataInfo, FamilyBase, GenerationOutput, OptimizerSpec, ProgressCallback, StepContext
from limner.models.diffusion.family import to_uint8
from limner.models.vae.config import PRESETS, SIZES, VAEConfig, get_preset
from limner.models.vae.decoder import Decoder
from limner.models.vae.encoder import Encoder
from limner.models.vae.prior import FittedGaussianPrior
from limner.models.vae.losses import (
    AdversarialLoss,
    PatchDiscriminator,
    ReconstructionLoss,
    feature_loss,
    kl_beta,
    kl_divergence,
    psnr,
)
from limner.models.declaration import Capability, FamilyDeclaration, OptionSpec, preset_lines
from limner.models.vae.quantizer import QuantizerOutput, VectorQuantizer, codebook_usage, perplexity
from limner.nn import TokenContext, prepare_tokens
from limner.overrides import merge_overrides

__all__ = ["VAE", "VAEFamily", "VAEOutput", "reparameterize"]

LOGVAR_RANGE = (-30.0, 20.0)  # keeps exp(logvar) finite, as latent diffusion's autoencoder
DISC_BETAS = (0.5, 0.9)  # Adam betas of both optimizers once a discriminator is in play (VQGAN)


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I) (Kingma & Welling 2014, eq. 10)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=torch.float32)
    return mu.float() + torch.exp(0.5 * logvar.float()) * eps


class VAEOutput(NamedTuple):
    """A training forward of :class:`VAE`.

    Attributes:
        recon: [B, C, H, W] reconstruction.
        mu, logvar: [B, C_z, h, w] posterior moments (KL variant; None for VQ).
        quant: the quantizer's output (VQ variant; None for KL).
    """

    recon: Tensor
    mu: Tensor | None
    logvar: Tensor | None
    quant: QuantizerOutput | None


class VAE(nn.Module):
    """Condition encoder + image encoder + (quantizer) + decoder, as one module (``"model"``).

    ``cond_encoder`` is the conditioning encoder (``limner.conditioning``); ``encoder`` the image
    encoder. ``forward`` is the training pass; ``encode``/``decode`` are deterministic.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.variant = config.variant
        enc = EncoderConfig.from_dict(config.encoder)
        self.cond_encoder = build_encoder(enc)
        cond_dim = 0 if enc.kind == CondKind.none else enc.dim
        cross_dim = enc.dim if enc.kind == CondKind.text else 0
        z = config.latent_channels
        shared = dict(widths=config.widths, num_res_blocks=config.num_res_blocks,
                      cond_dim=cond_dim, cross_dim=cross_dim, head_dim=config.head_dim,
                      dropout=config.dropout, max_groups=config.norm_groups, emb_mode=config.emb_mode)
        self.encoder = Encoder(config.channels, out_channels=2 * z if self.variant == "kl" else z,
                               **shared)
        self.decoder = Decoder(config.channels, latent_channels=z, **shared)
        self.prior = None  # KL only: the Gaussian fitted to q(z) that sampling draws from
        if self.variant == "kl" and config.prior == "fitted":
            C, h, w = config.latent_shape
            classes = enc.num_classes or 0 if enc.kind == CondKind.class_ else 0
            self.prior = FittedGaussianPrior(C * h * w, classes=classes)
        self.quantizer = None
        if self.variant == "vq":
            self.quantizer = VectorQuantizer(
                config.codebook_size, z, update=config.codebook_update,
                decay=config.codebook_decay, commitment=config.commitment,
                dead_threshold=config.dead_threshold,
            )

    def condition(self, inputs: CondInputs | None, batch_size: int, drop: Tensor | None = None
                  ) -> tuple[Tensor | None, TokenContext | None]:
        """(SiLU of the condition vector [B, D], text token context) for the blocks.

        ``inputs`` None gives the learned null condition (unconditional use of a CVAE).
        """
        if self.cond_encoder.kind == CondKind.none:
            return None, None
        if inputs is None:
            cond = self.cond_encoder.null(batch_size, self.cond_encoder.device)
        else:
            cond = self.cond_encoder(inputs, drop)
        context = None
        if self.cond_encoder.kind == CondKind.text:
            context = prepare_tokens(cond.tokens, cond.mask)
        return F.silu(cond.vector), context

    def forward(self, images: Tensor, inputs: CondInputs | None = None, drop: Tensor | None = None,
                generator: torch.Generator | None = None) -> VAEOutput:
        """Training pass: images [B, C, H, W] in [-1, 1] → reconstruction and latent terms.

        Args:
            images: the batch.
            inputs: condition inputs from ``cond_encoder.prepare`` (None = null condition).
            drop: [B] bool, rows trained with the null condition.
            generator: randomness of eps (KL) and of dead-code restarts (VQ).
        """
        vector, context = self.condition(inputs, images.shape[0], drop)
        h = self.encoder(images, vector, context)
        if self.quantizer is None:
            mu, logvar = h.chunk(2, dim=1)
            logvar = logvar.clamp(*LOGVAR_RANGE)
            z = reparameterize(mu, logvar, generator)
            return VAEOutput(self.decoder(z, vector, context), mu, logvar, None)
        quant = self.quantizer(h, generator)
        return VAEOutput(self.decoder(quant.z_q, vector, context), None, None, quant)

    def encode(self, images: Tensor, inputs: CondInputs | None = None) -> Tensor:
        """Deterministic latents [B, C_z, h, w]: posterior mean (KL) or nearest codes (VQ)."""
        vector, context = self.condition(inputs, images.shape[0])
        h = self.encoder(images, vector, context)
        if self.quantizer is None:
            return h.chunk(2, dim=1)[0]
        return self.quantizer.quantize(h)[0]

    def decode(self, latents: Tensor, inputs: CondInputs | None = None, quantize: bool = True) -> Tensor:
        """Latents [B, C_z, h, w] → images [B, C, H, W] (unclamped). VQ latents are snapped to
        their nearest codes first unless ``quantize`` is False."""
        vector, context = self.condition(inputs, latents.shape[0])
        if self.quantizer is not None and quantize:
            latents = self.quantizer.quantize(latents)[0]
        return self.decoder(latents, vector, context)


# ---------------------------------------------------------------------------------------------
# The family plug-in
# ---------------------------------------------------------------------------------------------


class VAEFamily(FamilyBase):
    """Family plug-in for KL and VQ autoencoders (see ``limner.models.base.Family``)."""

    name: ClassVar[str] = "vae"
    declaration: ClassVar[FamilyDeclaration] = FamilyDeclaration(
        summary="KL or vector-quantized autoencoder (Kingma & Welling 2014; van den Oord et al. 2017)",
        options=(OptionSpec("truncation", float, "prior temperature: 1 = the prior, 0 = its mode "
                            "(default: the run's)", min=0),),
        capabilities=frozenset({Capability.interpolate, Capability.reconstruct}),
        presets=tuple((p, ("vector-quantized (VQ-VAE), " if p.startswith("vq-") else "")
                       + SIZES[p.removeprefix("vq-")].description) for p in PRESETS),
    )
    # Config fields that follow from the data or another option; ``overrides`` may not set them.
    fixed_settings: ClassVar[dict[str, str]] = {
        "preset": "use --preset",
        "variant": "use --preset vq-tiny|vq-small|vq-base for the VQ variant",
        "resolution": "use --resolution",
        "channels": "follows the data",
        "encoder": "follows the data, --cond and --text-encoder",
    }

    def __init__(self, config: VAEConfig):
        self.config = config
        self.model = VAE(config)
        self.D = None
        if config.adversarial:
            self.D = PatchDiscriminator(config.channels, config.disc_channels, config.disc_layers,
                                        config.norm_groups)
        self.recon_loss = ReconstructionLoss(config.recon_loss)
        self.adv_loss = AdversarialLoss(config.disc_loss)

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
    ) -> "VAEFamily":
        """A new model for ``data`` from a named preset; ``overrides`` may set any VAEConfig
        field, ``variant`` included."""
        size, variant = get_preset(preset)
        overrides = dict(overrides or {})
        variant = overrides.pop("variant", variant)  # picks the preset's fields for that variant
        enc = resolve_encoder_config(
            cond, data, text_encoder=text_encoder, dim=size.text_dim, layers=size.text_layers
        )
        fields_ = {"prior": "fitted" if variant == "kl" else "normal", "emb_mode": "scale_shift",
                   **size.fields_for(variant)}
        base = dict(preset=preset, variant=variant, resolution=data.resolution,
                    channels=data.channels, encoder=enc.to_dict())
        if overrides:  # any other config field, checked against its default (limner.overrides)
            fields_ = merge_overrides({**_defaults(VAEConfig), **fields_}, overrides, where="family",
                                      fixed=cls.fixed_settings)
        return cls(VAEConfig(**base, **fields_))

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> "VAEFamily":
        """Rebuild from the dict saved in a run's config.json."""
        return cls(VAEConfig.from_dict(data))

    @staticmethod
    def train_defaults(preset: str) -> dict[str, Any]:
        """TrainConfig defaults that go with a preset."""
        return dict(get_preset(preset)[0].train)

    # ----------------------------------------------------------------- plug-in surface
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model} if self.D is None else {"model": self.model, "D": self.D}

    def optimizers(self) -> dict[str, OptimizerSpec]:
        betas = DISC_BETAS if self.D is not None else None
        specs = {"model": OptimizerSpec(params=[p for p in self.model.parameters() if p.requires_grad],
                                        betas=betas)}
        if self.D is not None:
            specs["D"] = OptimizerSpec(params=list(self.D.parameters()), betas=betas)
        return specs

    def option_defaults(self) -> dict[str, Any]:
        """No run-level defaults to record: a missing truncation means the family's own."""
        return {}

    @property
    def cond_kind(self) -> CondKind:
        return self.model.cond_encoder.kind

    @property
    def encoder(self) -> nn.Module:
        """The condition encoder (the image encoder is ``model.encoder``)."""
        return self.model.cond_encoder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C_z, h, w) of one image's latent, as ``encode`` returns and ``decode`` takes."""
        return self.config.latent_shape

    # ----------------------------------------------------------------- training
    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """One step: per micro-batch encode, sample/quantise, decode, loss, backward; then the
        discriminator's step when it is on.

        Metrics: ``loss``; ``recon`` (per-pixel MSE/L1); ``psnr`` (dB, of the training
        reconstructions); KL: ``kl`` (nats per pixel, the term ``beta`` weighs) and ``beta``;
        VQ: ``commit``, ``codebook_usage`` (fraction of codes used in the batch) and
        ``perplexity``; adversarial: ``adv`` (decoder), ``feature``, ``d_loss``.
        """
        cfg = self.config
        adversarial = self.D is not None and ctx.step >= cfg.disc_start
        beta = kl_beta(ctx.step, cfg.beta, cfg.beta_warmup)
        sums: dict[str, float] = {}
        counts = torch.zeros(cfg.codebook_size) if cfg.variant == "vq" else None
        micros = ctx.micro_batches(batch)
        fakes = []
        self._freeze_D(True)
        try:
            for micro in micros:
                gen = ctx.generator()
                inputs, drop = self._condition_inputs(micro, gen)
                with ctx.autocast():
                    out = ctx.net("model")(micro.images, inputs, drop, gen)
                    loss, terms = self._model_loss(out, micro.images, beta, adversarial)
                ctx.backward(loss, "model")
                if self.model.prior is not None:
                    self.model.prior.update(out.mu, out.logvar, micro.labels)
                _accumulate(sums, {"loss": loss, **terms}, len(micro))
                if out.quant is not None:
                    counts += out.quant.counts.cpu()
                if adversarial:
                    fakes.append(out.recon.detach())
            ctx.optimizer_step("model")
        finally:
            self._freeze_D(False)
        metrics = {k: v / len(batch) for k, v in sums.items()}
        if adversarial:
            metrics["d_loss"] = self._discriminator_step(micros, fakes, ctx)
        if cfg.variant == "kl":
            metrics["beta"] = beta
        else:
            metrics["codebook_usage"] = codebook_usage(counts)
            metrics["perplexity"] = perplexity(counts)
        return metrics

    def _freeze_D(self, frozen: bool) -> None:
        """D gets no gradient from the model's loss (it is called directly there, not via
        ``ctx.net``, so DDP does not expect its gradients)."""
        if self.D is not None:
            self.D.requires_grad_(not frozen)

    def _condition_inputs(self, micro: Batch, gen: torch.Generator | None):
        if self.cond_kind == CondKind.none:
            return None, None
        inputs = self.encoder.prepare(
            captions=micro.captions if self.cond_kind == CondKind.text else None,
            labels=micro.labels if self.cond_kind == CondKind.class_ else None,
            batch_size=len(micro),
        ).to(micro.images.device)
        drop = torch.rand(len(micro), device=micro.images.device, generator=gen) < self.config.cond_drop
        return inputs, drop

    def _model_loss(self, out: VAEOutput, x: Tensor, beta: float, adversarial: bool
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss of the autoencoder and its terms (for logging)."""
        cfg = self.config
        recon = self.recon_loss(out.recon, x).mean()
        terms = {"recon": recon}
        loss = recon
        if out.quant is None:
            kl = kl_divergence(out.mu, out.logvar).mean() / x[0].numel()  # nats per pixel
            loss = loss + beta * kl
            terms["kl"] = kl
        else:
            loss = loss + out.quant.loss
            terms["commit"] = out.quant.commit
        if adversarial:
            logits, fake_features = self.D(out.recon)
            adv = self.adv_loss.generator(logits)
            loss = loss + cfg.disc_weight * adv
            terms["adv"] = adv
            if cfg.feature_weight > 0:
                with torch.no_grad():
                    real_features = self.D(x)[1]
                feat = feature_loss(fake_features, real_features)
                loss = loss + cfg.feature_weight * feat
                terms["feature"] = feat
        terms["psnr"] = psnr(out.recon.detach().float().clamp(-1, 1), x.float(), 2.0).mean()
        return loss, terms

    def _discriminator_step(self, micros: list[Batch], fakes: list[Tensor], ctx: StepContext
                            ) -> float:
        """D's hinge/logistic loss on real images vs the step's reconstructions, and its update;
        returns the loss averaged over the batch."""
        total, n = 0.0, 0
        for micro, fake in zip(micros, fakes):
            with ctx.autocast():
                logits, _ = ctx.net("D")(torch.cat([micro.images, fake]))  # one pass, B real + B fake
                real_logits, fake_logits = logits.chunk(2)
                d_loss = self.adv_loss.discriminator(real_logits, fake_logits)
            ctx.backward(d_loss, "D")
            total += float(d_loss.detach()) * len(micro)
            n += len(micro)
        ctx.optimizer_step("D")
        return total / n

    # ----------------------------------------------------------------- encode / decode
    @contextmanager
    def _eval(self) -> Iterator[None]:
        """Eval mode (no dropout, no codebook updates) and no autograd, restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def _inputs(self, batch_size: int, prompts: Sequence[str] | None,
                labels: Sequence[int | str] | None) -> CondInputs | None:
        """Condition inputs for the run's kind; None (the null condition) when none are given."""
        kind = self.cond_kind
        if kind == CondKind.class_ and labels is not None:
            ids = [self.encoder.label_index(lab) for lab in labels]
            return self.encoder.prepare(labels=ids, batch_size=batch_size)
        if kind == CondKind.text and prompts is not None:
            return self.encoder.prepare(captions=list(prompts), batch_size=batch_size)
        return None

    def encode(self, images: Tensor, *, prompts: Sequence[str] | None = None,
               labels: Sequence[int | str] | None = None) -> Tensor:
        """Images [B, C, H, W] float in [-1, 1] → latents [B, *latent_shape] (posterior mean for
        KL, quantised codes for VQ). A conditional VAE without prompts/labels uses the null
        condition."""
        with self._eval():
            x = images.to(self.device, torch.float32)
            return self.model.encode(x, self._inputs(len(x), prompts, labels))

    def decode(self, latents: Tensor, *, prompts: Sequence[str] | None = None,
               labels: Sequence[int | str] | None = None) -> Tensor:
        """Latents [B, *latent_shape] → images [B, C, H, W] float, ~[-1, 1] (unclamped). VQ
        latents are snapped to their nearest codes first (as latent diffusion on a VQ space)."""
        with self._eval():
            z = latents.to(self.device, torch.float32)
            return self.model.decode(z, self._inputs(len(z), prompts, labels))

    def encode_tokens(self, images: Tensor, *, prompts: Sequence[str] | None = None,
                      labels: Sequence[int | str] | None = None) -> Tensor:
        """VQ only: images [B, C, H, W] in [-1, 1] → code indices [B, h, w] int64."""
        quantizer = self._quantizer()
        with self._eval():
            x = images.to(self.device, torch.float32)
            cond = self.model.condition(self._inputs(len(x), prompts, labels), len(x))
            return quantizer.quantize(self.model.encoder(x, *cond))[1]

    def decode_tokens(self, indices: Tensor, *, prompts: Sequence[str] | None = None,
                      labels: Sequence[int | str] | None = None) -> Tensor:
        """VQ only: code indices [B, h, w] → images [B, C, H, W] float, ~[-1, 1]."""
        quantizer = self._quantizer()
        with self._eval():
            z = quantizer.lookup(indices.to(self.device))
            return self.model.decode(z, self._inputs(len(z), prompts, labels), quantize=False)

    def _quantizer(self) -> VectorQuantizer:
        if self.model.quantizer is None:
            raise UsageError("this VAE is continuous (variant 'kl'); tokens need a 'vq' run")
        return self.model.quantizer

    @torch.no_grad()
    def reconstruct(self, images: Tensor, *, prompts: Sequence[str] | None = None,
                    labels: Sequence[int | str] | None = None, batch_size: int = 16) -> Tensor:
        """Deterministic reconstructions (posterior mean / nearest codes) of uint8 images.

        Args:
            images: [N, C, H, W] uint8 at the run's resolution and channel count.
            prompts, labels: per-image condition of a conditional VAE (None = null condition).
            batch_size: images per forward pass.
        Returns [N, C, H, W] uint8 on the CPU.
        """
        cfg = self.config
        expected = (cfg.channels, cfg.resolution, cfg.resolution)
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise UsageError(f"reconstruct needs uint8 images [N, {', '.join(map(str, expected))}], "
                             f"got {images.dtype} {list(images.shape)}")
        out = []
        for a in range(0, len(images), batch_size):
            x = images[a : a + batch_size].float() / 127.5 - 1.0
            p = prompts[a : a + batch_size] if prompts is not None else None
            lab = labels[a : a + batch_size] if labels is not None else None
            z = self.encode(x, prompts=p, labels=lab)
            out.append(to_uint8(self.decode(z, prompts=p, labels=lab)))
        return torch.cat(out) if out else images.clone()

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, request, *, callback: ProgressCallback | None = None) -> GenerationOutput:
        """Decode draws from the prior, one per seed (image i depends only on ``seeds[i]``).

        KL: z = mean + L (T eps), eps ~ N(0, I), with (mean, L L^T) the Gaussian fitted to the
        aggregate posterior during training (``prior.py``; runs with ``prior="normal"``: z ~
        N(0, T^2 I)). VQ: every latent position draws a code independently from the
        codebook's usage histogram raised to 1/T (a unigram prior: a placeholder until the token
        transformer family provides a real prior over code sequences). T is the request's
        ``truncation`` when given, else the run's ``temperature`` (1.0); T = 0 gives the prior's
        mode. Prompts/labels condition a conditional VAE; without them the null condition is
        used. ``cfg``, ``sampler``, ``steps`` and ``negative`` do not apply and are ignored.
        """
        T = self.config.temperature if request.truncation is None else float(request.truncation)
        if not T >= 0:
            raise UsageError(f"--truncation (temperature) must be >= 0 for a VAE, got {T}")
        labels = request.labels if self.cond_kind == CondKind.class_ else None
        z = self._prior_latents(request.seeds, T, labels) if getattr(request, "noise", None) is None \
            else self._explicit_latents(request.noise, T, labels)
        if getattr(request, "mix_weights", None) is not None and self.cond_kind != CondKind.none:
            with self._eval():  # interpolation between two conditions
                inputs = self.encoder.prepare_request(request, len(z))
                x = self.model.decode(z.to(self.device, torch.float32), inputs)
        else:
            x = self.decode(z, prompts=request.prompts, labels=request.labels)
        if callback is not None:
            callback({"i": 0, "steps": 1, "x": x, "denoised": x})
        extra = {"temperature": T, "prior": self._prior_name()}
        return GenerationOutput(images=to_uint8(x), seeds=list(request.seeds), extra=extra)

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one image's Gaussian prior draw (KL variant; what interpolation blends)."""
        if self.model.quantizer is not None:
            raise UsageError("a VQ autoencoder has a categorical prior: there is no Gaussian "
                             "latent to interpolate (train a KL VAE, or wait for the token prior)")
        return tuple(self.latent_shape)

    def _prior_name(self) -> str:
        if self.config.variant == "vq":
            return "unigram"
        return "fitted" if self.model.prior is not None and self.model.prior.fitted else "normal"

    def _to_prior(self, eps: Tensor, labels: Sequence[int] | None = None) -> Tensor:
        """Unit-Gaussian draws [B, C, h, w] -> the KL prior: N(0, I), or the fitted Gaussian
        (of each row's class, for a class-conditional VAE)."""
        return eps if self.model.prior is None else self.model.prior.sample(eps, labels)

    def _explicit_latents(self, noise: Tensor, T: float, labels: Sequence[int] | None = None) -> Tensor:
        """Unit-Gaussian latents given by the caller, at temperature T (KL only)."""
        _ = self.noise_shape  # refuses VQ with a clear message
        return self._to_prior(noise.float() * T, labels)

    def _prior_latents(self, seeds: Sequence[int], T: float, labels: Sequence[int] | None = None) -> Tensor:
        """[B, *latent_shape] draws from the prior, row i from ``Generator().manual_seed(seeds[i])``."""
        C, h, w = self.latent_shape
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        if self.model.quantizer is None:
            return self._to_prior(torch.stack([torch.randn(C, h, w, generator=g) for g in gens]) * T, labels)
        quantizer = self.model.quantizer
        probs = quantizer.prior().float().cpu()
        if T == 0:
            rows = [torch.full((h, w), int(probs.argmax())) for _ in gens]
        else:
            probs = probs ** (1.0 / T)
            probs = probs / probs.sum()
            rows = [torch.multinomial(probs, h * w, replacement=True, generator=g).view(h, w)
                    for g in gens]
        return quantizer.lookup(torch.stack(rows).to(self.device)).cpu()


def _accumulate(sums: dict[str, float], terms: dict[str, Tensor], weight: int) -> None:
    """sums[k] += terms[k] * weight, as Python floats (weight = micro-batch size)."""
    for key, value in terms.items():
        sums[key] = sums.get(key, 0.0) + float(value.detach()) * weight


def _defaults(cls: type) -> dict[str, Any]:
    """The default of every dataclass field that has one."""
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out
