"""The attention maps are the model's attention: captured on the reference path they give the
block's own output, and a token's maps sum as softmax over keys does (1 per pixel over tokens)."""

from __future__ import annotations

import pytest
import torch

from limner.errors import UsageError
from limner.explain import compute_view
from limner.explain.attention import capture_cross_attention, cross_attention_blocks, token_maps
from limner.generation.pipeline import load_run

pytestmark = pytest.mark.xdist_group("explain")  # one worker builds the tiny runs once (--dist loadgroup)



def test_captured_attention_is_the_blocks_own(text_run):
    family = load_run(text_run).family
    name, block = cross_attention_blocks(family.modules())[0]
    enc = family.encoder
    cond = enc(enc.prepare(captions=["red heart", "a smiling face with big eyes"], batch_size=2))
    from limner.nn.attention import prepare_tokens

    context = prepare_tokens(cond.tokens, cond.mask)
    h = torch.randn(2, block.cross_q.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = block._cross_attention(h, context)  # the kernel or SDPA path
        with capture_cross_attention(family.modules()) as capture:
            got = block._cross_attention(h, context)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    (_, probs, H, W), = capture.calls
    assert probs.shape == (2, block.heads, H * W, cond.tokens.shape[1])
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, block.heads, H * W))
    # padding tokens of the shorter prompt get no attention
    pad = ~cond.mask[0]
    assert pad.any() and probs[0][..., pad].abs().max() == 0
    assert "_cross_attention" not in vars(block)  # the kernel path is back


def test_token_maps_sum_to_one_per_pixel(text_run, explain_cache):
    result = compute_view(text_run, "attention", prompt="red heart", cache_dir=explain_cache)
    low, high = result.data["pixel_sum_over_tokens"]
    assert low == pytest.approx(1.0, abs=1e-5) and high == pytest.approx(1.0, abs=1e-5)
    assert result.data["tokens"] == ["<bos>", "red", "heart"]
    assert sum(result.data["token_share"]) == pytest.approx(1.0, abs=1e-5)
    assert result.data["calls"] > 0
    family = load_run(text_run).family
    with capture_cross_attention(family.modules()) as capture:
        from limner.generation.request import BatchRequest

        family.generate(BatchRequest(seeds=[0, 1], prompts=["red heart", "red heart"]))
    maps = token_maps(capture, 2, 16)
    torch.testing.assert_close(maps.sum(1), torch.ones(2, 16, 16))


def test_attention_needs_a_text_run(gan_run, explain_cache):
    with pytest.raises(UsageError, match="no cross-attention"):
        compute_view(gan_run, "attention", prompt="x", cache_dir=explain_cache)
