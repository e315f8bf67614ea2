"""View "attention": per-token cross-attention maps over the image, for a prompt.

Every cross-attention block of a text-conditioned run (``limner.nn.Attention2d`` with tokens:
the diffusion U-Net's, the VAE's middle block) lets each image position take a softmax-weighted
mix of the prompt's tokens (Rombach et al. 2022). While the run generates an image for the
prompt, each block's attention probabilities softmax(q k^T / sqrt(d)) are captured on
PyTorch's reference path (the compiled CPU kernel never forms them), averaged over heads,
resized to the image and averaged over blocks and sampler steps: the map of a token shows where
the image listened to that word (the idea of Hertz et al. 2022, "Prompt-to-Prompt", whose
figures show the same averaged maps). With classifier-free guidance, only the conditional
half of each batch is kept.

Token transformers (MaskGIT, autoregressive) have no cross-attention: the prompt's tokens are a
prefix of the sequence and the image tokens attend to them in the same self-attention. For those
runs the family's hooks answer instead (``FamilyHooks.prompt_attention``,
``limner.explain.token_dynamics``): per block, the share of each image token's attention that
goes to each prompt token (a part of its attention, so the maps of a pixel sum to that block's
prefix share, not to 1).
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from limner.errors import UsageError
from limner.explain import render
from limner.explain.base import ExplainResult, ExplainRun, register_view
from limner.nn.attention import Attention2d, TokenContext, _heads, _merge_heads


@dataclass
class AttentionCapture:
    """Probabilities captured per call: (block name, probs [B, heads, H*W, T], H, W)."""

    calls: list[tuple[str, Tensor, int, int]] = field(default_factory=list)


def cross_attention_blocks(modules: dict[str, nn.Module]) -> list[tuple[str, Attention2d]]:
    """(dotted name, block) of every attention block with cross-attention to tokens."""
    return [(f"{top}.{name}", m) for top, module in modules.items()
            for name, m in module.named_modules() if isinstance(m, Attention2d) and m.cross_dim]


def _probe(name: str, capture: AttentionCapture):
    """A replacement for ``Attention2d._cross_attention`` that computes attention explicitly
    (scores, mask, softmax over keys, weighted values: the math every path implements) and
    records the probabilities."""

    def cross_attention(self: Attention2d, h: Tensor, context: TokenContext) -> Tensor:
        B, C, H, W = h.shape
        q = _heads(self.cross_q(h), self.heads).float()  # [B, heads, H*W, d]
        kv = self.cross_kv(context.tokens)  # [B, T, 2C]
        T = kv.shape[1]
        k, v = kv.view(B, T, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q * q.shape[-1] ** -0.5) @ k.float().transpose(-1, -2)  # [B, heads, H*W, T]
        if context.attn_mask is not None:
            scores = scores.masked_fill(~context.attn_mask, float("-inf"))
        probs = scores.softmax(-1)
        capture.calls.append((name, probs.detach().cpu(), H, W))
        return _merge_heads((probs @ v.float()).to(h.dtype), H, W)

    return cross_attention


@contextlib.contextmanager
def capture_cross_attention(modules: dict[str, nn.Module]) -> Iterator[AttentionCapture]:
    """Within the block, every cross-attention call of ``modules`` records its probabilities."""
    capture = AttentionCapture()
    blocks = cross_attention_blocks(modules)
    for name, block in blocks:
        block._cross_attention = types.MethodType(_probe(name, capture), block)
    try:
        yield capture
    finally:
        for _, block in blocks:
            del block._cross_attention  # back to the class's method (kernel path)


def token_maps(capture: AttentionCapture, rows: int, size: int) -> Tensor:
    """Average maps [rows, T, size, size]: heads averaged, each call resized (nearest, so the
    sum over tokens stays 1 at every pixel) then calls averaged. Calls with more rows than
    ``rows`` (classifier-free guidance's [cond; uncond] batch) keep their first ``rows``."""
    if not capture.calls:
        raise UsageError("no cross-attention ran: this run is not text-conditioned")
    total, n = None, 0
    for _, probs, H, W in capture.calls:
        p = probs[:rows].mean(1)  # [rows, H*W, T]
        p = p.transpose(1, 2).reshape(rows, -1, H, W)  # [rows, T, H, W]
        p = F.interpolate(p, size=(size, size), mode="nearest")
        total = p if total is None else total + p
        n += 1
    return total / n


def token_labels(encoder: Any, prompt: str, T: int) -> list[str]:
    """A label per token position: the words of the trained tokenizer or MiniLM's pieces."""
    tok = getattr(encoder, "tokenizer", None)
    token_ids = encoder.prepare(captions=[prompt], batch_size=1).token_ids
    if token_ids is None:  # a frozen encoder (MiniLM) tokenizes inside: ask its own tokenizer
        return _frozen_token_labels(prompt, T)
    ids = token_ids[0].tolist()
    vocab = getattr(tok, "vocab", None)
    if isinstance(vocab, list):
        from limner.conditioning.tokenizer import SPECIAL_TOKENS

        words = list(SPECIAL_TOKENS) + vocab
        return [words[i] if 0 <= i < len(words) else f"#{i}" for i in ids][:T]
    convert = getattr(tok, "convert_ids_to_tokens", None)
    if callable(convert):
        return list(convert(ids))[:T]
    return [f"token {i}" for i in range(T)]


@register_view("attention", "per-token cross-attention maps over a generated image, for a prompt",
               params={
                   "prompt": "the prompt (default: the run's first training caption)",
                   "seed": "seed of the image (default 0)",
                   "step": "checkpoint (default: the newest)",
                   "cell": "pixel size of each map (default 96)",
               })
def attention_view(run: ExplainRun, prompt: str | None = None, seed: int = 0,
                   step: int | str | None = None, cell: int = 96) -> ExplainResult:
    """The attention view (see the module docstring)."""
    from limner.generation.request import BatchRequest

    from limner.explain.hooks import hooks_for

    loaded = run.load(step)
    family = loaded.family
    own = hooks_for(family).prompt_attention(run, family, loaded.step, prompt, int(seed))
    if own is not None:  # token transformers: joint self-attention with the prompt's tokens
        return own
    if not cross_attention_blocks(family.modules()):
        raise UsageError(f"RUN: {run.run_dir} has no cross-attention (a {run.family_name} run "
                         f"conditioned on {family.cond_kind.value}); this view needs a text-conditioned run")
    if prompt is None:
        prompt = next(c for c in run.dataset.captions if c.strip())
    with capture_cross_attention(family.modules()) as capture:
        images = family.generate(BatchRequest(seeds=[int(seed)], prompts=[prompt])).images
    size = images.shape[-1]
    maps = token_maps(capture, 1, size)[0]  # [T, H, W]
    labels = token_labels(family.encoder, prompt, maps.shape[0])
    keep = [i for i, lab in enumerate(labels) if lab not in ("<pad>",)]
    result = ExplainResult("attention", data={
        "prompt": prompt, "seed": seed, "step": loaded.step, "tokens": [labels[i] for i in keep],
        "blocks": sorted({name for name, *_ in capture.calls}),
        "calls": len(capture.calls),
        "pixel_sum_over_tokens": [float(maps.sum(0).min()), float(maps.sum(0).max())],
        "token_share": [float(maps[i].mean()) for i in keep],
    })
    result.images["attention"] = attention_image(images[0], maps[keep], [labels[i] for i in keep],
                                                 prompt, cell)
    return result


def attention_image(image: Tensor, maps: Tensor, labels: list[str], prompt: str, cell: int) -> Image.Image:
    """The image, then each token's map over a faded copy of it (one colour scale for all)."""
    base = render.uint8_rgb(image).astype(float)
    grey = base.mean(axis=2, keepdims=True).repeat(3, axis=2)
    top = float(maps.max()) if maps.numel() else 1.0
    cells = [render.caption(render.cell(base.astype("uint8"), cell), "image")]
    for m, label in zip(maps, labels):
        overlay = 0.35 * grey + 0.65 * render.heat(m, top).astype(float)
        cells.append(render.caption(render.cell(overlay.clip(0, 255).astype("uint8"), cell),
                                    f"{label} {float(m.mean()):.0%}"))
    return render.grid([cells], title=f'where each token of "{prompt}" is attended '
                                      f"(share of attention per token)")


def _frozen_token_labels(prompt: str, T: int) -> list[str]:
    """MiniLM's word pieces for the prompt (its features keep one row per piece, [CLS] and
    [SEP] included), or numbered positions when the package is not installed."""
    try:
        from limner.conditioning.minilm import load_frozen_minilm

        tok = load_frozen_minilm().tokenizer
        pieces = tok.convert_ids_to_tokens(tok(prompt, truncation=True, max_length=T)["input_ids"])
    except Exception:  # noqa: BLE001 - labels are a nicety; the maps stand without them
        pieces = []
    return (list(pieces) + [f"token {i}" for i in range(len(pieces), T)])[:T]
