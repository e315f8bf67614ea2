"""The token families: MaskGIT and autoregressive transformers over a frozen VQ-VAE's codes.

* ``maskgit``: Chang, Zhang, Jiang, Liu, Freeman, "MaskGIT: Masked Generative Image Transformer"
  (CVPR 2022). Training masks a share gamma(r) = cos(pi/2 r), r ~ U(0, 1), of the tokens and
  predicts them (cross-entropy on the masked positions, label smoothing 0.1); sampling unmasks
  the most confident tokens over a few steps (``limner.samplers.maskgit``). Inpainting falls out
  of it: the known tokens are given, the rest is unmasked (``MaskGITFamily.inpaint``, and
  ``limner sample --init-image --mask``: a token is regenerated when its patch holds a masked
  pixel). Image-to-image (``--init-image --strength s``) keeps a share 1 - s of the init image's
  tokens, chosen by the seed, and unmasks the rest.
* ``autoregressive``: the transformer of VQGAN (Esser et al. 2021) / LlamaGen (Sun et al. 2024),
  causal in raster order, trained with next-token cross-entropy and sampled one token at a time
  with a KV cache, temperature, top-k and top-p (``limner.samplers.autoregressive``).

Both condition like every family (class label, jointly trained text encoder or frozen MiniLM,
none), train with condition dropout and sample with classifier-free guidance on the logits
(Ho & Salimans 2022), the negative prompt's logits in place of the unconditional ones.

As latent diffusion does with its VAE (``limner.models.latent_diffusion``), the tokenizer is
**copied** into the run at creation (``vq.safetensors`` in every checkpoint, frozen, provenance in
the config), and **tokens are encoded once and cached** in memory per dataset index and image
digest, each image on its own so its tokens do not depend on the batch it came in.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from limner.conditioning import CondKind, build_encoder, resolve_encoder_config
from limner.conditioning.base import Conditioning
from limner.conditioning.encoders import EncoderConfig
from limner.data.batch import Batch
from limner.errors import CheckpointError, UsageError
from limner.models.base import DataInfo, FamilyBase, GenerationOutput, ProgressCallback, StepContext
from limner.models.declaration import Capability, FamilyDeclaration, OptionSpec, RunNeed, preset_lines
from limner.models.diffusion.family import to_uint8
from limner.models.transformer.config import PRESETS, TransformerConfig, get_preset
from limner.models.transformer.model import KVCache, TokenModel, TokenNetConfig, TokenTransformer
from limner.models.vae.family import VAEFamily
from limner.overrides import merge_overrides
from limner.samplers.autoregressive import sample_autoregressive
from limner.samplers.maskgit import cosine_mask_ratio, sample_maskgit

__all__ = ["AutoregressiveFamily", "MaskGITFamily", "TokenFamily"]

VQ_NEED = RunNeed(
    "vq", "vae", "a VQ-VAE run trained with --cond none (--family vae --preset vq-small): its codes "
    "are the tokens, and its weights are copied into the new run",
    train_args=("--preset", "vq-{size}", "--cond", "none"), provenance="vq_run",
)
CFG_OPTION = OptionSpec("cfg", float, "guidance scale on the logits; 1 = none (default: the run's)", min=0)


class TokenFamily(FamilyBase):
    """What MaskGIT and the autoregressive family share (see ``limner.models.base.Family``);
    the subclasses differ in ``kind``, the training loss and the sampler."""

    name: ClassVar[str]
    kind: ClassVar[str]
    declaration: ClassVar[FamilyDeclaration]
    fixed_settings: ClassVar[dict[str, str]] = {
        "preset": "use --preset",
        "kind": "use --family",
        "resolution": "follows the --vq run",
        "channels": "follows the --vq run",
        "grid": "follows the --vq run",
        "encoder": "follows the data, --cond and --text-encoder",
        "vq": "a frozen copy of the --vq run; train another VQ-VAE run to change it",
        "vq_run": "follows --vq",
        "net.num_codes": "follows the --vq run",
        "net.seq_len": "follows the --vq run",
        "net.cond_dim": "follows the condition",
        "net.causal": "follows --family",
    }

    def __init__(self, config: TransformerConfig):
        self.config = config.validate()
        encoder = build_encoder(EncoderConfig.from_dict(config.encoder))
        self.model = TokenModel(TokenTransformer(TokenNetConfig.from_dict(config.net)), encoder)
        self.tokenizer = VAEFamily.from_config({**config.vq, "adversarial": False})
        self.tokenizer.model.requires_grad_(False)
        self._cache: dict[tuple[int, bytes], Tensor] = {}

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(cls, preset: str, data: DataInfo, cond: CondKind | str, *, text_encoder: str = "trained",
               overrides: dict[str, Any] | None = None, vq: str | Path | None = None) -> "TokenFamily":
        """A new model on the codes of the VQ-VAE run ``vq`` (its EMA weights are copied)."""
        p = get_preset(preset, cls.name)
        source = _load_vq_run(vq, cls.name)
        vq_cfg = source.family.config
        if (data.resolution, data.channels) != (vq_cfg.resolution, vq_cfg.channels):
            raise UsageError(f"the data is {data.resolution} px with {data.channels} channel(s), the --vq run "
                             f"{vq_cfg.resolution} px with {vq_cfg.channels}; train at --resolution "
                             f"{vq_cfg.resolution} on data of that kind", field="vq")
        _, h, w = source.family.latent_shape
        enc = resolve_encoder_config(cond, data, text_encoder=text_encoder, dim=p.text_dim, layers=p.text_layers)
        net = TokenNetConfig(num_codes=vq_cfg.codebook_size, seq_len=h * w, causal=cls.kind == "autoregressive",
                             cond_dim=0 if enc.kind == CondKind.none else enc.dim, **p.net)
        cfg = TransformerConfig(
            preset=preset, kind=cls.kind, resolution=vq_cfg.resolution, channels=vq_cfg.channels, grid=h,
            net=net.to_dict(), encoder=enc.to_dict(), vq=vq_cfg.to_dict(),
            vq_run={"path": str(Path(vq).resolve()), "run_id": source.run_id, "step": source.step,
                    "model_hash": source.model_hash},
            **cls.sampling_defaults,
        )
        if overrides:
            cfg = TransformerConfig.from_dict(merge_overrides(cfg.to_dict(), overrides, where="family",
                                                              fixed=cls.fixed_settings))
        family = cls(cfg)
        family.tokenizer.model.load_state_dict(source.family.model.state_dict())
        return family

    sampling_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> "TokenFamily":
        return cls(TransformerConfig.from_dict(data))

    @classmethod
    def train_defaults(cls, preset: str) -> dict[str, Any]:
        """TrainConfig defaults that go with a preset."""
        return dict(get_preset(preset, cls.name).train)

    # ----------------------------------------------------------------- plug-in surface
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "vq": self.tokenizer.model}

    def option_defaults(self) -> dict[str, Any]:
        c = self.config
        return {name: getattr(c, name) for name in ("steps", "cfg", "temperature", "top_k", "top_p")
                if self.declaration.option(name) is not None}

    @property
    def cond_kind(self) -> CondKind:
        return self.model.encoder.kind

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder

    @property
    def num_tokens(self) -> int:
        return self.config.grid * self.config.grid

    @property
    def num_codes(self) -> int:
        return self.model.net.config.num_codes

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """One image's unit-Gaussian draw (tokens x codes, plus MaskGIT's confidence column);
        what interpolation slerps between seeds."""
        return (self.num_tokens, self.num_codes + (1 if self.kind == "maskgit" else 0))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ----------------------------------------------------------------- tokens
    def encode_batch(self, batch: Batch) -> Tensor:
        """Code indices [B, N] of ``batch.images``, encoding only unseen images (each alone)."""
        pixels = batch.images.detach().to("cpu", torch.float32)
        rows = []
        for i, index in enumerate(batch.indices.tolist()):
            key = (int(index), _digest(pixels[i]))
            tokens = self._cache.get(key)
            if tokens is None:
                tokens = self.tokenizer.encode_tokens(batch.images[i : i + 1])[0].flatten().cpu()
                self._cache[key] = tokens
            rows.append(tokens)
        return torch.stack(rows).to(batch.images.device)

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def decode(self, tokens: Tensor) -> Tensor:
        """Code indices [B, N] -> images [B, C, H, W] float, ~[-1, 1]."""
        g = self.config.grid
        return self.tokenizer.decode_tokens(tokens.reshape(-1, g, g))

    # ----------------------------------------------------------------- training
    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """Per micro-batch: cached tokens, condition dropout, the family's loss, backward."""
        total, n = 0.0, 0
        for micro in ctx.micro_batches(batch):
            tokens = self.encode_batch(micro)
            gen = ctx.generator()
            inputs, drop = self._condition_inputs(micro, tokens.device, gen)
            with ctx.autocast():
                loss = self.loss(ctx.net("model"), tokens, inputs, drop, gen)
            ctx.backward(loss, "model")
            total += float(loss.detach()) * len(micro)
            n += len(micro)
        ctx.optimizer_step("model")
        return {"loss": total / n}

    def _condition_inputs(self, micro: Batch, device: torch.device, gen: torch.Generator | None):
        if self.cond_kind == CondKind.none:
            return None, None
        inputs = self.encoder.prepare(captions=micro.captions, labels=micro.labels, batch_size=len(micro)).to(device)
        drop = torch.rand(len(micro), device=device, generator=gen) < self.config.cond_drop
        return inputs, drop

    def loss(self, net: nn.Module, tokens: Tensor, inputs, drop, gen) -> Tensor:
        raise NotImplementedError

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, request, *, callback: ProgressCallback | None = None) -> GenerationOutput:
        """Sample a batch: per-image seeded noise, condition (+ CFG / negative prompt), decode."""
        tokens = self.sample_tokens(request, callback=callback)
        return GenerationOutput(images=to_uint8(self.decode(tokens)), seeds=list(request.seeds),
                                extra={"tokens": list(self.noise_shape)[:1]})

    def sample_tokens(self, request, *, callback: ProgressCallback | None = None, **extra: Any) -> Tensor:
        B = len(request.seeds)
        cond, guided, scale = self._guided_condition(request, B)
        noise = self._noise(request).to(self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            return self._sample(request, cond, guided, scale, noise, callback, **extra)
        finally:
            self.model.train(was_training)

    def option(self, request, name: str) -> Any:
        """A generation option: the request's (checked by the pipeline) or the run's."""
        value = getattr(request, name, None) if name in ("steps", "cfg") else \
            (getattr(request, "options", None) or {}).get(name)
        return getattr(self.config, name) if value is None else value

    def _guided_condition(self, request, B: int) -> tuple[Conditioning, bool, float]:
        """The condition for the model's rows: [cond; uncond] when guiding (2B rows)."""
        scale = float(self.option(request, "cfg"))
        if self.cond_kind == CondKind.none:
            return Conditioning.empty(B), False, scale
        cond = self.encoder(self.encoder.prepare_request(request, B).to(self.device))
        if scale == 1.0:
            return cond, False, scale
        if getattr(request, "negative", None):
            uncond = self.encoder(self.encoder.prepare(captions=[request.negative] * B, batch_size=B).to(self.device))
        else:
            uncond = self.encoder.null(B, device=self.device)
        return Conditioning.cat([cond, uncond]), True, scale

    def _noise(self, request) -> Tensor:
        """Row i from ``Generator().manual_seed(seeds[i])``, unless the request brings its own."""
        given = getattr(request, "noise", None)
        if given is not None:
            return given.to(torch.float32)
        return torch.stack([torch.randn(self.noise_shape, generator=torch.Generator().manual_seed(int(s)))
                            for s in request.seeds])

    def _sample(self, request, cond, guided, scale, noise, callback, **extra) -> Tensor:
        raise NotImplementedError


class MaskGITFamily(TokenFamily):
    """MaskGIT (Chang et al. 2022); see the module docstring."""

    name: ClassVar[str] = "maskgit"
    kind: ClassVar[str] = "maskgit"
    sampling_defaults: ClassVar[dict[str, Any]] = {"steps": 8, "temperature": 4.5, "cfg": 2.0}
    declaration: ClassVar[FamilyDeclaration] = FamilyDeclaration(
        summary="MaskGIT: a bidirectional transformer that unmasks VQ tokens in a few steps (Chang et al. 2022)",
        options=(
            OptionSpec("steps", int, "unmasking steps (default: the run's, 8)", min=1, max=256),
            OptionSpec("temperature", float, "MaskGIT: randomness of which tokens are kept, annealed to 0 "
                       "over the steps (default: the run's, 4.5); autoregressive: softmax temperature, "
                       "0 = greedy (default: the run's, 1)", min=0),
            CFG_OPTION,
        ),
        needs=(VQ_NEED,),
        capabilities=frozenset({Capability.negative_prompt, Capability.interpolate, Capability.img2img,
                                Capability.inpaint}),
        presets=preset_lines(PRESETS),
    )
    # Sampling computes only the still-masked positions' logits and runs the first step once per
    # distinct condition (see ``_sample``); tests compare it with the plain path (False).
    sampling_shortcuts: bool = True

    @torch.no_grad()
    def generate(self, request, *, callback: ProgressCallback | None = None) -> GenerationOutput:
        """Sample a batch (see ``TokenFamily.generate``); with an init image (the pipeline's
        ``request.init`` uint8 [B, C, H, W], ``mask`` [B, 1, H, W] bool, ``strength``) only the
        tokens to regenerate are unmasked."""
        init = getattr(request, "init", None)
        if init is None:
            return super().generate(request, callback=callback)
        keep = self._kept_tokens(request, getattr(request, "mask", None), getattr(request, "strength", None))
        tokens = self.sample_tokens(request, callback=callback, known=self._tokens_of(init), known_mask=keep)
        return GenerationOutput(images=to_uint8(self.decode(tokens)), seeds=list(request.seeds),
                                extra={"regenerated_tokens": int((~keep).sum())})

    def _tokens_of(self, images: Tensor) -> Tensor:
        """Code indices [B, N] of uint8 images [B, C, H, W]."""
        x = images.to(self.device, torch.float32) / 127.5 - 1
        return self.tokenizer.encode_tokens(x).reshape(len(x), -1).to(self.device)

    def _kept_tokens(self, request, mask: Tensor | None, strength: float | None) -> Tensor:
        """[B, N] bool, True where the init image's token stays: outside the mask's patches, or
        (no mask) all but a share ``strength`` picked by each image's seeded noise."""
        g, B, N = self.config.grid, len(request.seeds), self.num_tokens
        if mask is not None:
            masked = F.adaptive_max_pool2d(mask.to(self.device, torch.float32), (g, g)) > 0
            return ~masked.reshape(B, -1)
        count = math.ceil((0.6 if strength is None else float(strength)) * N)
        order = self._noise(request)[..., -1].argsort(dim=1, stable=True).argsort(dim=1)  # seeded ranks
        return (order >= count).to(self.device)

    def loss(self, net: nn.Module, tokens: Tensor, inputs, drop, gen) -> Tensor:
        """Mask ceil(gamma(r) N) tokens, r ~ U(0, 1), and predict them (Chang et al. 2022, 3.2)."""
        B, N = tokens.shape
        r = torch.rand(B, device=tokens.device, generator=gen)
        count = torch.ceil(cosine_mask_ratio(r) * N).clamp(1, N)  # [B] tokens to mask
        scores = torch.rand(B, N, device=tokens.device, generator=gen)
        rank = scores.argsort(dim=1).argsort(dim=1)  # a random order of the positions
        masked = rank < count[:, None]
        inp = tokens.masked_fill(masked, self.model.net.special)
        logits = net(inp, inputs, drop)
        return F.cross_entropy(logits[masked], tokens[masked], label_smoothing=self.config.label_smoothing)

    def _sample(self, request, cond, guided, scale, noise, callback, known=None, known_mask=None) -> Tensor:
        steps = int(self.option(request, "steps"))
        if known_mask is not None:
            steps = max(1, min(steps, int((~known_mask).sum(dim=1).max())))
        special = self.model.net.special
        distinct = _distinct_rows(cond, self.device) if self.sampling_shortcuts else None

        def logits(tokens: Tensor) -> Tensor:
            wanted = tokens == special  # the sampler reads only the still-masked positions' logits
            if distinct is not None and bool(wanted.all()):
                # every token is [MASK] (the first step): the logits depend on the condition
                # alone, so each distinct condition runs once
                first, inverse = distinct
                return self.model(tokens[first], cond[first], wanted=wanted[first])[inverse]
            return self.model(tokens, cond, wanted=wanted if self.sampling_shortcuts else None)

        return sample_maskgit(
            logits, noise, mask_id=special, steps=steps,
            temperature=float(self.option(request, "temperature")), cfg=scale, guided=guided,
            known=known, known_mask=known_mask, callback=self._preview(callback),
        )

    def _preview(self, callback: ProgressCallback | None) -> ProgressCallback | None:
        """Previews for the studio: the current choice at every position, decoded."""
        if callback is None:
            return None

        def preview(info: dict[str, Any]) -> None:
            callback({**info, "denoised": self.decode(info["predicted"]).clamp(-1, 1)})

        return preview

    @torch.no_grad()
    def inpaint(self, images: Tensor, mask: Tensor, request) -> GenerationOutput:
        """Regenerate the masked part of ``images``: uint8 [B, C, H, W] and ``mask`` [B, 1, H, W]
        bool (True = regenerate). A token is regenerated when any pixel of its patch is masked;
        the others are the images' own codes. Same request fields and seeds as ``generate``
        (the pipeline then copies the unmasked pixels back bitwise)."""
        keep = self._kept_tokens(request, mask, None)
        tokens = self.sample_tokens(request, known=self._tokens_of(images), known_mask=keep)
        return GenerationOutput(images=to_uint8(self.decode(tokens)), seeds=list(request.seeds),
                                extra={"regenerated_tokens": int((~keep).sum())})


class AutoregressiveFamily(TokenFamily):
    """Raster-order autoregressive transformer (Esser et al. 2021; Sun et al. 2024)."""

    name: ClassVar[str] = "autoregressive"
    kind: ClassVar[str] = "autoregressive"
    sampling_defaults: ClassVar[dict[str, Any]] = {"temperature": 1.0, "cfg": 2.0, "top_k": 0, "top_p": 1.0}
    declaration: ClassVar[FamilyDeclaration] = FamilyDeclaration(
        summary="Autoregressive transformer over VQ tokens in raster order with a KV cache (Esser et al. 2021)",
        options=(
            MaskGITFamily.declaration.option("temperature"),
            OptionSpec("top_k", int, "sample among the k likeliest codes; 0 = all (default: the run's, 0)", min=0),
            OptionSpec("top_p", float, "sample among the likeliest codes holding this probability mass; "
                       "1 = all (default: the run's, 1)", min=0, max=1, min_open=True),
            CFG_OPTION,
        ),
        needs=(VQ_NEED,),
        capabilities=frozenset({Capability.negative_prompt, Capability.interpolate}),
        presets=preset_lines(PRESETS),
    )
    use_cache: bool = True  # sampling with the KV cache (tests compare it with uncached sampling)

    def loss(self, net: nn.Module, tokens: Tensor, inputs, drop, gen) -> Tensor:
        """Next-token cross-entropy: inputs [start, t_0 .. t_{N-2}] predict t_0 .. t_{N-1}."""
        start = torch.full_like(tokens[:, :1], self.model.net.special)
        logits = net(torch.cat([start, tokens[:, :-1]], dim=1), inputs, drop)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1),
                               label_smoothing=self.config.label_smoothing)

    def _sample(self, request, cond, guided, scale, noise, callback, **extra) -> Tensor:
        cache = KVCache() if self.use_cache else None

        def step(inputs: Tensor, start: int) -> Tensor:
            return self.model(inputs, cond, cache=cache, start=start)

        return sample_autoregressive(
            step, noise, start_id=self.model.net.special,
            temperature=float(self.option(request, "temperature")),
            top_k=int(self.option(request, "top_k")), top_p=float(self.option(request, "top_p")),
            cfg=scale, guided=guided, use_cache=self.use_cache, callback=callback,
        )


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _load_vq_run(path: str | Path | None, family: str):
    """``load_run`` of the VQ-VAE run (EMA weights, CPU); errors name ``--vq``."""
    if path is None:
        raise UsageError(f"--family {family} needs a tokenizer: train one with `limner train DATA "
                         f"{' '.join(VQ_NEED.suggested_args())}` and pass it as --vq RUN_DIR", field="vq")
    # Reading another run folder is the generation pipeline's job; imported here because models
    # sit below generation in the package layering and only ``create`` needs it.
    from limner.generation.pipeline import load_run

    try:
        loaded = load_run(path, device="cpu")
    except (UsageError, CheckpointError) as e:
        raise type(e)(f"--vq: {e}") from None
    fam = loaded.family
    if fam.name != VQ_NEED.family or getattr(fam.model, "quantizer", None) is None:
        raise UsageError(f"{path} is not a VQ-VAE run (a {fam.name!r} run without a codebook); train one "
                         f"with {' '.join(VQ_NEED.suggested_args())}", field="vq")
    if fam.cond_kind != CondKind.none:
        raise UsageError(f"{path} is a conditional VQ-VAE (--cond {fam.cond_kind.value}); the tokenizer must "
                         "be unconditional: train it with --cond none", field="vq")
    return loaded


def _distinct_rows(cond: Conditioning, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """(first, inverse) for the rows of ``cond`` (the sampler's B' rows): ``first`` [U] holds the
    first row of each distinct condition, ``inverse`` [B'] each row's index into ``first``; None
    when every row differs. Under guidance the unconditional half is one condition, and images
    of one class share theirs."""
    B = cond.batch_size
    parts = [t.reshape(B, -1).to(torch.float64) for t in (cond.vector, cond.tokens, cond.mask) if t is not None]
    if parts:
        _, inverse = torch.unique(torch.cat(parts, dim=1), dim=0, return_inverse=True)
    else:  # unconditional: one condition
        inverse = torch.zeros(B, dtype=torch.long, device=device)
    U = int(inverse.max()) + 1
    if U == B:
        return None
    rows = torch.arange(B, device=inverse.device)
    first = torch.full((U,), B, dtype=torch.long, device=inverse.device).scatter_reduce_(0, inverse, rows, "amin")
    return first, inverse


def _digest(image: Tensor) -> bytes:
    return hashlib.blake2b(image.contiguous().numpy().tobytes(), digest_size=16).digest()
