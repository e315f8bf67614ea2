"""The features and dynamics views of the token transformers (MaskGIT, autoregressive) come from
the model: the level maps follow the blocks' weights, the attention is each block's own (rows sum
to 1, the same as a recomputation from its q/k weights, and it reproduces the block's output),
the per-position losses are the terms of the training loss, and a trained model reads
differently from an untrained one."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from limner.errors import UsageError
from limner.explain import compute_view
from limner.explain.base import ExplainRun
from limner.explain.features import level_activations
from limner.explain.hooks import hooks_for
from limner.explain.token_dynamics import (
    _held_batch, loss_positions, mask_ratio_sweep, raster_statistics, recorded_loss, token_loss,
)
from limner.explain.tokens import capture_self_attention, model_inputs
from limner.generation.pipeline import load_run

pytestmark = pytest.mark.xdist_group("explain")  # one worker builds the tiny runs once (--dist loadgroup)

TOKEN_RUNS = ["maskgit_run", "autoregressive_run"]


def _family(run):
    family = load_run(run).family
    family.model.eval()
    return family


def _text_condition(family, prompts):
    enc = family.encoder
    return enc(enc.prepare(captions=prompts, batch_size=len(prompts)))


@pytest.mark.parametrize("fixture", TOKEN_RUNS)
@pytest.mark.parametrize("k", [1, 2])
def test_changed_block_changes_its_level_and_later_ones(fixture, k, request):
    family = _family(request.getfixturevalue(fixture))
    probe = hooks_for(family).feature_probe(family)
    names = [n for n, _ in probe.levels]
    assert names == ["token embedding", "block 1", "block 2"]  # tiny preset: depth 2
    x = torch.rand(2, family.config.channels, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    before = level_activations(probe, x)
    g = family.config.grid
    assert all(a.shape == (2, family.model.net.config.dim, g, g) for a in before.values())
    with torch.no_grad():
        for p in probe.levels[k][1].parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(4)) * 0.5)
    after = level_activations(probe, x)
    for i, name in enumerate(names):
        assert torch.equal(before[name], after[name]) == (i < k), (name, i)


@pytest.mark.parametrize("fixture", TOKEN_RUNS)
def test_captured_attention_is_the_blocks_own(fixture, request):
    """Rows sum to 1; they equal softmax(q k^T / sqrt(d)) recomputed here from the block's
    weights; applied to the values they give the block's own output; padding and (causal) later
    tokens get nothing, and the prefix never looks at the image."""
    family = _family(request.getfixturevalue(fixture))
    net = family.model.net
    g, N = family.config.grid, family.config.grid ** 2
    tokens = torch.randint(0, net.config.num_codes, (2, N), generator=torch.Generator().manual_seed(0))
    cond = _text_condition(family, ["red heart", "a smiling face with big eyes"])
    seen = {}

    def keep(name):
        def hook(module, args, out):
            seen[name] = (args[0].detach(), args[1], out.detach())
        return hook

    blocks = [(f"block {i + 1}", b) for i, b in enumerate(net.blocks)]
    handles = [b.register_forward_hook(keep(n)) for n, b in blocks]
    try:
        with torch.no_grad(), capture_self_attention(blocks) as capture:
            net(model_inputs(family, tokens), cond)
    finally:
        for h in handles:
            h.remove()
    assert [name for name, *_ in capture.calls] == ["block 1", "block 2"]
    for name, block in blocks:
        probs = capture.of(name)[0]
        x, mask, out = seen[name]
        B, L, D = x.shape
        P = L - N
        assert probs.shape == (2, block.heads, L, L)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, block.heads, L))
        # the same numbers from the block's weights, written out by hand
        h = F.layer_norm(x, (D,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
        qkv = h @ block.qkv.weight.T + block.qkv.bias
        q, k, v = (t.reshape(B, L, block.heads, D // block.heads).transpose(1, 2) for t in qkv.split(D, -1))
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / (D // block.heads) ** 0.5
        manual = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        torch.testing.assert_close(probs, manual, rtol=1e-5, atol=1e-6)
        # the probabilities reproduce the block (PyTorch's fused attention inside it)
        o = (probs @ v).transpose(1, 2).reshape(B, L, D)
        y = x + block.proj(o)
        y = y + block.mlp(block.norm2(y))
        torch.testing.assert_close(y, out, rtol=1e-4, atol=1e-5)
        # padding of the shorter prompt gets no attention; the prefix does not see the image
        pad = torch.cat([torch.zeros(1, dtype=torch.bool), ~cond.mask[0]])
        assert pad.any() and probs[0][..., :P][..., pad].abs().max() == 0
        assert probs[:, :, :P, P:].abs().max() == 0
        image = probs[:, :, P:, P:]
        later = torch.ones(N, N, dtype=torch.bool).triu(1)
        if family.kind == "autoregressive":
            assert image[..., later].abs().max() == 0
        else:
            assert image[..., later].min() > 0  # MaskGIT looks both ways


def test_cached_sampling_attention_equals_the_teacher_forced_pass(autoregressive_run):
    """What the dynamics view shows for an autoregressive run (one teacher-forced pass over the
    generated codes) is the attention the KV-cached sampler computed token by token."""
    from limner.generation.request import BatchRequest

    family = _family(autoregressive_run)
    net = family.model.net
    N = family.config.grid ** 2
    blocks = [("block 2", net.blocks[1])]
    request = BatchRequest(seeds=[5], prompts=["red heart"], cfg=1.0)
    with capture_self_attention(blocks) as sampled:
        tokens = family.sample_tokens(request)
    assert len(sampled.calls) == N  # one call per token, with the cache
    with torch.no_grad(), capture_self_attention(blocks) as forced:
        family.model(model_inputs(family, tokens), _text_condition(family, ["red heart"]))
    full = forced.of("block 2")[0][0]  # [heads, L, L]
    P = full.shape[1] - N
    for j, (_, probs) in enumerate(sampled.calls):
        row = probs[0, :, -1]  # the newest image query: position j
        assert row.shape[-1] == P + j + 1
        torch.testing.assert_close(row, full[:, P + j, : P + j + 1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fixture", TOKEN_RUNS)
def test_per_position_loss_averages_to_the_training_loss(fixture, request, explain_cache):
    run = ExplainRun(request.getfixturevalue(fixture), cache_dir=explain_cache)
    family = run.load(ema=False).family
    batch, _, tokens, _ = _held_batch(run, family, 8, 0)
    gen = torch.Generator().manual_seed(7)
    inputs, drop = family._condition_inputs(batch, tokens.device, gen)  # as train_step draws them
    with torch.no_grad():
        loss, fed, logits = recorded_loss(family, tokens, inputs, drop, gen)
        per = token_loss(family, logits, tokens)
        where = loss_positions(family, fed)
        torch.testing.assert_close(per[where].mean(), loss)
        # recording changed nothing: the family's loss with the same draws is the same number
        gen2 = torch.Generator().manual_seed(7)
        inputs2, drop2 = family._condition_inputs(batch, tokens.device, gen2)
        torch.testing.assert_close(family.loss(family.model, tokens, inputs2, drop2, gen2), loss)
    if family.kind == "maskgit":
        assert 0 < where.sum() < where.numel()  # the masked share only
        assert torch.equal(fed[where], torch.full_like(fed[where], family.model.net.special))
    else:
        assert where.all()
        assert torch.equal(fed[:, 1:], tokens[:, :-1])  # teacher forcing


def test_autoregressive_view_loss_is_the_training_loss(autoregressive_run, explain_cache):
    """The dynamics view's positions average to the family's loss on the held batch (its own
    captions, nothing dropped) with the same weights."""
    run = ExplainRun(autoregressive_run, cache_dir=explain_cache)
    result = compute_view(run, "dynamics", prompt="red heart", count=4)
    d = result.data
    family = _family(autoregressive_run)
    batch, idx, tokens, _ = _held_batch(run, family, 4, 0)
    assert idx.tolist() == d["indices"]
    inputs = family.encoder.prepare(captions=batch.captions, batch_size=len(batch))
    with torch.no_grad():
        loss = family.loss(family.model, tokens, inputs, None, None)
    N = family.config.grid ** 2
    assert len(d["position_loss"]) == N and len(d["row_loss"]) == family.config.grid
    assert d["mean_loss"] == pytest.approx(float(loss), rel=1e-5)
    masses = [t["mass"] for t in d["top_k"]]
    inside = [t["true_in_top_k"] for t in d["top_k"]]
    assert masses == sorted(masses) and inside == sorted(inside)
    assert d["top_k"][-1]["k"] == family.num_codes
    assert masses[-1] == pytest.approx(1.0, abs=1e-5) and inside[-1] == 1.0
    assert 1 <= d["codes_for_half_mass"] <= d["codes_for_90pct_mass"] <= family.num_codes
    _check_prefix_attention(d["attention"], family.config.grid)
    assert "one teacher-forced pass" in d["attention"]["how"]
    assert {"dynamics", "attention"} <= set(result.images)


def _check_prefix_attention(att, grid):
    assert att["prompt"] == "red heart"
    assert att["tokens"] == ["pooled", "<bos>", "red", "heart"]
    for block in att["blocks"]:
        low, high = block["row_sums"]
        assert low == pytest.approx(1.0, abs=1e-5) and high == pytest.approx(1.0, abs=1e-5)
        maps = torch.as_tensor(block["maps"])
        assert maps.shape == (4, grid, grid)
        # each image token's prefix attention is a part of its row: between 0 and 1 in sum
        share = maps.sum(0)
        assert share.min() > 0 and share.max() < 1
        assert block["prefix_share"] == pytest.approx(float(share.mean()), rel=1e-5)


def test_maskgit_dynamics_by_mask_ratio(maskgit_run, explain_cache):
    result = compute_view(maskgit_run, "dynamics", prompt="red heart", count=4, cache_dir=explain_cache)
    d = result.data
    rows = d["mask_ratios"]
    ratios = [r["ratio"] for r in rows]
    assert ratios == sorted(ratios) and ratios[-1] == 1.0
    counts = [r["masked_tokens"] for r in rows]
    assert counts == sorted(counts) and counts[-1] == 64
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 < r["confidence"] <= 1 and 0 < r["p_true"] <= r["confidence"] + 1e-6
        assert r["loss"] > 0 and r["cross_entropy"] > 0
    assert d["training_median_mask_ratio"] == pytest.approx(2 ** -0.5)
    _check_prefix_attention(d["attention"], 8)
    assert "averaged over the sampler's 8 steps" in d["attention"]["how"]
    assert {"dynamics", "attention"} <= set(result.images)


@pytest.mark.parametrize("fixture", TOKEN_RUNS)
def test_trained_and_untrained_models_read_differently(fixture, request, explain_cache):
    """The same numbers from a freshly initialised transformer (same tokenizer) differ, and the
    trained one predicts the training codes better."""
    from limner.models.registry import family_class

    run = ExplainRun(request.getfixturevalue(fixture), cache_dir=explain_cache)
    trained = run.load(ema=False).family
    torch.manual_seed(0)
    fresh = family_class(run.family_name).from_config(run.config["family"]["config"])
    fresh.tokenizer.model.load_state_dict(trained.tokenizer.model.state_dict())
    losses = []
    for family in (trained, fresh):
        family.model.eval()
        _, _, tokens, cond = _held_batch(run, family, 8, 0)
        with torch.no_grad():
            if family.kind == "maskgit":
                rows, _ = mask_ratio_sweep(family, tokens, cond)
                losses.append(sum(r["loss"] for r in rows) / len(rows))
            else:
                losses.append(sum(raster_statistics(family, tokens, cond)["position_loss"]) / tokens.shape[1])
    assert losses[0] < losses[1] - 0.02, losses


@pytest.mark.parametrize("fixture", TOKEN_RUNS)
def test_token_features_view(fixture, request, explain_cache):
    result = compute_view(request.getfixturevalue(fixture), "features", index=2, top=4, patches=4,
                          search=12, token=9, cache_dir=explain_cache)
    d = result.data
    assert [lv["name"] for lv in d["levels"]] == ["token embedding", "block 1", "block 2"]
    assert all(lv["shape"] == [32, 8, 8] and len(lv["top_channels"]) == 4 for lv in d["levels"])
    chosen = d["channel"]
    assert chosen["level"] == "block 2" and len(chosen["patches"]) == 4
    acts = [p["activation"] for p in chosen["patches"]]
    assert acts == sorted(acts, reverse=True)
    assert all(0 <= p["token"] < 64 for p in chosen["patches"])
    att = d["self_attention"]
    assert (att["token"], att["row"], att["col"]) == (9, 1, 1)
    assert [b["level"] for b in att["blocks"]] == ["block 1", "block 2"]
    for b in att["blocks"]:
        assert b["total"] == pytest.approx(1.0, abs=1e-5)
        grid_map = torch.as_tensor(b["map"]).flatten()
        if fixture == "autoregressive_run":
            assert grid_map[10:].abs().max() == 0  # token 9 reads tokens 0..9 (its input is code 8)
        assert 0 < b["prefix_share"] < 1
    assert {"features", "self_attention"} <= set(result.images)
    with pytest.raises(UsageError, match="token: must be a raster index in 0..63"):
        compute_view(request.getfixturevalue(fixture), "features", token=64, search=4, cache_dir=explain_cache)


def test_cli_writes_token_views(maskgit_run, tmp_path, explain_cache):
    from limner.cli.main import main

    out = tmp_path / "dyn"
    assert main(["explain", str(maskgit_run), "dynamics", "--out", str(out), "--prompt", "red heart",
                 "--set", "count=4", "--cache-dir", str(explain_cache)]) == 0
    assert {p.name for p in out.iterdir()} == {"dynamics.png", "attention.png", "dynamics.json"}
    assert json.loads((out / "dynamics.json").read_text())["family"] == "maskgit"
    out = tmp_path / "feat"
    assert main(["explain", str(maskgit_run), "features", "--out", str(out), "--index", "1",
                 "--set", "search=8", "--cache-dir", str(explain_cache)]) == 0
    assert {p.name for p in out.iterdir()} == {"features.png", "self_attention.png", "features.json"}


def test_token_options_are_usage_errors_elsewhere(vq_run, explain_cache):
    """``token`` needs a token model; ``prompt`` a text-conditioned one (the VQ-VAE is neither)."""
    with pytest.raises(UsageError, match="token: only token models"):
        compute_view(vq_run, "features", token=3, search=4, cache_dir=explain_cache)
    with pytest.raises(UsageError, match="prompt: this vae run is not text-conditioned"):
        compute_view(vq_run, "dynamics", prompt="red heart", cache_dir=explain_cache)


def test_attention_view_of_a_text_token_run(maskgit_run, explain_cache):
    """The "attention" view answers for a token run with its joint-attention maps (there is no
    cross-attention to read), labelled as such."""
    result = compute_view(maskgit_run, "attention", prompt="red heart", seed=2, cache_dir=explain_cache)
    d = result.data
    assert d["kind"] == "joint self-attention to the condition prefix" and d["seed"] == 2
    _check_prefix_attention(d, 8)
    assert sum(d["token_share"]) < 1  # a part of each image token's attention, not all of it
    assert set(result.images) == {"attention"}
