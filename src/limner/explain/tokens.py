"""What the views read from a token transformer (``limner.models.transformer``): its hidden
states laid out on the token grid, and its self-attention.

The MaskGIT and autoregressive families run one pre-norm transformer (Vaswani et al. 2017) over
a sequence [condition prefix; image tokens]: the prefix is one token made from the condition's
pooled vector (a learned token when the run is unconditional) followed, for text runs, by one
token per prompt token; then the h x w codes of a frozen VQ-VAE (van den Oord et al. 2017) in
raster order. Image tokens attend to the prefix and to image tokens (all of them for MaskGIT,
the earlier ones for the autoregressive family); the prefix never attends to image tokens. So
text reaches the image through *joint* self-attention, not through separate cross-attention
layers, and the attention an image token gives each prefix token is the transformer's own
per-word map (the readout Hertz et al. 2022 use for cross-attention, applied to joint
attention).

Nothing here changes the model: forward hooks read each block's input and recompute its
attention probabilities softmax(q k^T / sqrt(d)) from the block's own ``norm1`` and ``qkv``
layers and the mask it was given (PyTorch's fused attention never forms them);
``tests/explain/test_explain_token_views.py`` checks that the probabilities, applied to the
block's values, give the block's own output.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from limner.conditioning import CondKind
from limner.conditioning.base import Conditioning
from limner.explain.hooks import FeatureProbe


# ---------------------------------------------------------------------------------------------
# Self-attention of a block, recomputed from its own layers
# ---------------------------------------------------------------------------------------------


def block_attention(block: nn.Module, x: Tensor, mask: Tensor, cache: Any = None, layer: int = 0) -> Tensor:
    """Attention probabilities [B, heads, L, L_keys] of ``block`` (``transformer.model.Block``)
    on input ``x`` [B, L, D] with ``mask`` [B, 1, L, L_keys] (True = may attend), as its forward
    computes them: q, k from ``qkv(norm1(x))`` (keys after those already in ``cache``), scores
    q k^T / sqrt(d), masked, softmax over keys. Float32 whatever the block's dtype."""
    B, L, _ = x.shape
    q, k, _v = block.qkv(block.norm1(x)).view(B, L, 3, block.heads, -1).permute(2, 0, 3, 1, 4)
    if cache is not None and layer < len(cache.keys):
        k = torch.cat([cache.keys[layer], k], dim=2)
    scores = (q.float() * q.shape[-1] ** -0.5) @ k.float().transpose(-1, -2)
    scores = scores.masked_fill(~mask.to(scores.device), float("-inf"))
    return scores.softmax(-1)


@dataclass
class SelfAttentionCapture:
    """Probabilities recorded per block call, in call order: (level name, probs [B, heads, L,
    L_keys] on the CPU). Rows are the call's queries: the condition prefix then the image
    tokens in a fresh call, only the new image tokens when a KV cache holds the rest; keys are
    everything the queries may see (the cached ones first)."""

    calls: list[tuple[str, Tensor]] = field(default_factory=list)

    def of(self, name: str) -> list[Tensor]:
        return [p for n, p in self.calls if n == name]


@contextlib.contextmanager
def capture_self_attention(blocks: list[tuple[str, nn.Module]]) -> Iterator[SelfAttentionCapture]:
    """Within the block, every forward call of each (name, block) records its attention
    probabilities (see :func:`block_attention`)."""
    capture = SelfAttentionCapture()
    handles = []
    for name, block in blocks:
        def hook(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            x, mask = args[0], args[1]
            cache = args[2] if len(args) > 2 else None
            layer = args[3] if len(args) > 3 else 0
            with torch.no_grad():
                probs = block_attention(module, x, mask, cache, layer)
            capture.calls.append((name, probs.detach().cpu()))
        handles.append(block.register_forward_pre_hook(hook))
    try:
        yield capture
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------------
# The transformer as a feature hierarchy
# ---------------------------------------------------------------------------------------------


def null_condition(family: Any, batch_size: int, device: torch.device) -> Conditioning:
    """The learned null condition of a token run (empty for an unconditional run, whose prefix
    is then the learned null token)."""
    if family.cond_kind == CondKind.none:
        return Conditioning.empty(batch_size)
    return family.encoder.null(batch_size, device)


def model_inputs(family: Any, tokens: Tensor) -> Tensor:
    """What the transformer is fed for an image's codes [B, N] in training when nothing is
    masked: the codes themselves (MaskGIT), or the start code followed by codes 0..N-2 (the
    autoregressive family's teacher forcing: position j then predicts code j)."""
    if family.kind == "autoregressive":
        start = torch.full_like(tokens[:, :1], family.model.net.special)
        return torch.cat([start, tokens[:, :-1]], dim=1)
    return tokens


def grid_maps(hidden: Tensor, grid: int) -> Tensor:
    """Hidden states [B, L, D] (prefix first) -> the image tokens' states on the grid [B, D, g, g]."""
    B, _, D = hidden.shape
    return hidden[:, -grid * grid:].transpose(1, 2).reshape(B, D, grid, grid)


def token_feature_probe(family: Any) -> FeatureProbe:
    """The token transformer opened up: level 0 is the code embedding, level i the output of
    block i (the residual stream), each laid out on the token grid; the images are tokenized by
    the run's own VQ-VAE and the condition is the learned null condition."""
    net = family.model.net
    g = family.config.grid
    levels: list[tuple[str, nn.Module]] = [("token embedding", net.tok_emb)]
    levels += [(f"block {i + 1}", block) for i, block in enumerate(net.blocks)]

    def run(images: Tensor) -> Tensor:
        tokens = family.tokenizer.encode_tokens(images).reshape(len(images), -1).to(images.device)
        return family.model(model_inputs(family, tokens), null_condition(family, len(images), images.device))

    if family.kind == "autoregressive":
        fed = ("the start code and the image's codes shifted by one (teacher forcing): position j "
               "holds the state that predicts code j from the codes before it")
    else:
        fed = "the image's codes with none masked"
    what = (f"the {family.kind} transformer on the image's {g}x{g} VQ codes ({fed}; null condition)")
    return FeatureProbe(levels, run, what=what, to_maps=lambda t: grid_maps(t, g),
                        default_level=levels[-1][0], token_grid=g, attention_blocks=levels[1:], search=64)


def query_attention(capture: SelfAttentionCapture, name: str, query: int, grid: int,
                    row: int = 0) -> tuple[Tensor, Tensor]:
    """Where image token ``query`` (raster index) looks in the first call of block ``name``:
    its attention to each image position as a map [g, g] and to each prefix token [P], heads
    averaged (together they sum to 1)."""
    probs = capture.of(name)[0][row].mean(0)  # [L, L_keys]
    N = grid * grid
    P = probs.shape[0] - N
    weights = probs[P + query]
    return weights[P:].reshape(grid, grid), weights[:P]
