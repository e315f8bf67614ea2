"""Configuration of the VAE family (continuous KL and vector-quantized) and its named presets.

A preset names a model size plus the training recipe that suits it. The variant is part of the
preset name: ``tiny``/``small``/``base`` are KL VAEs (Kingma & Welling 2014), ``vq-tiny``/
``vq-small``/``vq-base`` the same sizes as VQ-VAEs (van den Oord et al. 2017). Library callers
can also pass ``overrides={"variant": "vq"}`` to ``VAEFamily.create``. Everything resolved for a
run is saved in its ``config.json``, so a run reloads without the dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from limner.errors import UsageError
from limner.nn import EmbMode

Variant = Literal["kl", "vq"]
ReconLoss = Literal["mse", "l1"]
CodebookUpdate = Literal["ema", "loss"]
DiscLoss = Literal["hinge", "logistic"]
Prior = Literal["normal", "fitted"]


@dataclass
class VAEConfig:
    """Resolved configuration of a VAE (what ``config.json`` holds under "family").

    Attributes:
        preset: the preset it was built from (for display; the fields below are authoritative).
        variant: "kl" (Gaussian posterior, reparameterisation trick) or "vq" (codebook).
        resolution, channels: image size in pixels and channel count (1 or 3).
        encoder: the condition encoder's ``EncoderConfig`` as a dict (kind none/class/text).

        widths: width of each resolution level, full resolution first; the latent grid is
            ``resolution / 2 ** (len(widths) - 1)`` on a side.
        num_res_blocks: residual blocks per level (the decoder has one more, as in VQGAN).
        latent_channels: channels of the latent z (KL) or dimension of a code (VQ).
        head_dim: width of one head of the middle attention block.
        norm_groups: maximum group-norm groups.
        dropout: dropout inside residual blocks.

        recon_loss: per-pixel reconstruction loss, "mse" or "l1", averaged over pixels.
        beta: KL weight per pixel (Higgins et al. 2017). With "mse" the loss is the negative
            ELBO of a Gaussian decoder with fixed variance sigma_x^2 = beta / 2 (images in
            [-1, 1]), up to constants: beta = 1 is the plain VAE, smaller trades prior fit for
            sharper reconstructions. The default 0.01 means sigma_x ~ 0.07.
        beta_warmup: steps over which beta rises linearly from 0 (KL annealing, Bowman et al.
            2016); 0 = no warm-up.

        codebook_size: number of codes K (VQ).
        codebook_update: "ema" = codes are exponential moving averages of their assigned
            encodings (van den Oord et al. 2017, appendix; Razavi et al. 2019); "loss" = codes are
            parameters learned by the codebook loss ||sg[z_e] - e||^2. In both the encoder gets
            the straight-through gradient.
        codebook_decay: EMA decay of the code statistics (counts, sums).
        commitment: weight of the commitment loss ||z_e - sg[e]||^2 (beta of van den Oord et al.).
        dead_threshold: a code whose EMA count of assignments per forward pass falls below this
            is restarted at a random encoding of the current batch (Dhariwal et al. 2020).

        adversarial: add a patch discriminator ("D", its own optimizer) and its loss for sharp
            decodes (VQGAN, Esser et al. 2021).
        disc_loss: "hinge" or "logistic" (non-saturating) GAN loss.
        disc_weight: weight of the decoder's adversarial term (fixed; VQGAN's adaptive weight is
            not implemented).
        disc_start: steps before the discriminator and its losses switch on.
        disc_channels, disc_layers: width and number of stride-2 layers of the discriminator.
        feature_weight: weight of the feature loss (L1 between discriminator features of the
            reconstruction and of the input; needs ``adversarial``). 0 = off.

        cond_drop: probability of training a row with the null condition, so reconstructing or
            sampling without a prompt/label is meaningful for a conditional VAE.
        temperature: default sampling temperature (the request's ``truncation`` overrides it).
        prior: what a KL VAE samples from: "fitted" (a Gaussian fitted to the aggregate
            posterior during training, ``prior.py``) or "normal" (N(0, I); runs made before the
            fitted prior existed load as "normal").
        emb_mode: how a conditional VAE's residual blocks take the condition vector:
            "scale_shift" (adaptive group norm) or "shift" (added before the norm, which erases
            it in one-channel groups; runs made before adaptive norm existed load as "shift").
    """

    preset: str
    variant: Variant
    resolution: int
    channels: int
    encoder: dict[str, Any]
    widths: list[int] = field(default_factory=lambda: [32, 64])
    num_res_blocks: int = 1
    latent_channels: int = 4
    head_dim: int = 32
    norm_groups: int = 32
    dropout: float = 0.0
    recon_loss: ReconLoss = "mse"
    beta: float = 0.01
    beta_warmup: int = 0
    codebook_size: int = 512
    codebook_update: CodebookUpdate = "ema"
    codebook_decay: float = 0.99
    commitment: float = 0.25
    dead_threshold: float = 1.0
    adversarial: bool = False
    disc_loss: DiscLoss = "hinge"
    disc_weight: float = 0.1
    disc_start: int = 0
    disc_channels: int = 64
    disc_layers: int = 3
    feature_weight: float = 0.0
    cond_drop: float = 0.1
    temperature: float = 1.0
    prior: Prior = "normal"
    emb_mode: EmbMode = "shift"

    def __post_init__(self) -> None:
        self.widths = [int(w) for w in self.widths]
        self.validate()

    @property
    def downsampling(self) -> int:
        """Image side / latent side."""
        return 2 ** (len(self.widths) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C_z, h, w) of one image's latent."""
        side = self.resolution // self.downsampling
        return (self.latent_channels, side, side)

    def validate(self) -> None:
        """Raise UsageError naming the first nonsensical field."""
        _choice("variant", self.variant, Variant)
        _choice("recon_loss", self.recon_loss, ReconLoss)
        _choice("codebook_update", self.codebook_update, CodebookUpdate)
        _choice("disc_loss", self.disc_loss, DiscLoss)
        _choice("prior", self.prior, Prior)
        _choice("emb_mode", self.emb_mode, EmbMode)
        if not self.widths or any(w < 1 for w in self.widths):
            raise UsageError(f"vae widths must be positive, got {self.widths}")
        if self.widths[-1] % self.head_dim:
            raise UsageError(f"vae widths[-1] ({self.widths[-1]}) must be a multiple of "
                             f"head_dim ({self.head_dim})")
        if self.resolution % self.downsampling:
            raise UsageError(f"resolution {self.resolution} is not divisible by the VAE's "
                             f"downsampling factor {self.downsampling} ({len(self.widths)} levels)")
        for name in ("num_res_blocks", "latent_channels", "codebook_size", "disc_channels",
                     "disc_layers", "norm_groups", "head_dim"):
            if getattr(self, name) < 1:
                raise UsageError(f"vae {name} must be positive, got {getattr(self, name)}")
        for name in ("beta", "beta_warmup", "commitment", "dead_threshold", "disc_weight",
                     "disc_start", "feature_weight", "temperature"):
            if getattr(self, name) < 0:
                raise UsageError(f"vae {name} must be >= 0, got {getattr(self, name)}")
        for name in ("codebook_decay", "cond_drop", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise UsageError(f"vae {name} must be in [0, 1), got {getattr(self, name)}")
        if self.adversarial and self.resolution < 2**self.disc_layers:
            raise UsageError(f"vae disc_layers ({self.disc_layers}) is too deep for "
                             f"{self.resolution} px images (needs resolution >= 2**disc_layers)")
        if self.feature_weight > 0 and not self.adversarial:
            raise UsageError("vae feature_weight > 0 needs adversarial=True "
                             "(the features are the discriminator's)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown vae config key(s): {', '.join(unknown)}")
        return cls(**data)


def _choice(name: str, value: Any, choices: Any) -> None:
    if value not in get_args(choices):
        raise UsageError(f"vae {name} must be one of {', '.join(get_args(choices))}; got {value!r}")


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named model size and the training recipe that goes with it.

    Attributes:
        model: VAEConfig fields shared by both variants (widths, blocks, losses, ...).
        kl_latent_channels / vq_latent_channels: latent width of each variant (VQ codes work
            better in a low dimension, Yu et al. 2022).
        text_dim, text_layers: width and depth of the jointly trained text encoder.
        train: TrainConfig defaults for this size (the CLI overrides them).
    """

    model: dict[str, Any]
    kl_latent_channels: int
    vq_latent_channels: int
    text_dim: int
    text_layers: int
    train: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def fields_for(self, variant: str) -> dict[str, Any]:
        """VAEConfig fields of this size for ``variant``."""
        latent = self.vq_latent_channels if variant == "vq" else self.kl_latent_channels
        return {**self.model, "latent_channels": latent}


SIZES: dict[str, Preset] = {
    "tiny": Preset(
        model=dict(widths=[16, 32], num_res_blocks=1, head_dim=16, norm_groups=8,
                   codebook_size=64, beta_warmup=10),
        kl_latent_channels=4, vq_latent_channels=8, text_dim=32, text_layers=1,
        train=dict(batch_size=8, lr=1e-3, warmup_steps=5, steps=50, sample_every=0,
                   save_every=25, ema_decay=0.99, log_every=5),
        description="~170k parameters, for tests (latent 8x8 at 16 px)",
    ),
    "small": Preset(
        model=dict(widths=[32, 64, 128], num_res_blocks=2, head_dim=32, codebook_size=512,
                   beta_warmup=500),
        kl_latent_channels=4, vq_latent_channels=16, text_dim=128, text_layers=2,
        train=dict(batch_size=32, lr=1e-3, warmup_steps=100, steps=3000, sample_every=500,
                   save_every=500, ema_decay=0.995, log_every=10),
        description="~3.5M parameters; trains on a laptop CPU at 32 px (latent 8x8)",
    ),
    "base": Preset(
        model=dict(widths=[128, 128, 256], num_res_blocks=2, head_dim=64, codebook_size=1024,
                   beta_warmup=2000, adversarial=True, disc_start=10000, disc_weight=0.1),
        kl_latent_channels=4, vq_latent_channels=32, text_dim=256, text_layers=4,
        train=dict(batch_size=64, lr=2e-4, warmup_steps=500, steps=50000, sample_every=2500,
                   save_every=2500, ema_decay=0.999, log_every=50),
        description="~15M parameters, for a GPU at 32-64 px; VQGAN patch discriminator after 10k steps",
    ),
}

PRESETS: tuple[str, ...] = tuple(SIZES) + tuple(f"vq-{name}" for name in SIZES)


def get_preset(name: str) -> tuple[Preset, Variant]:
    """The size and variant a preset name stands for (``vq-<size>`` selects the VQ variant)."""
    variant: Variant = "vq" if name.startswith("vq-") else "kl"
    size = name[3:] if variant == "vq" else name
    if size not in SIZES:
        raise UsageError(
            f"--preset: unknown preset {name!r} for family vae (choose from {', '.join(PRESETS)})"
        )
    return SIZES[size], variant
