"""The VAE family: KL and VQ variants under every condition kind, the maths of each loss term,
the codebook (straight-through, EMA, dead-code restarts, usage), training through the real
trainer with bitwise resume, and deterministic sampling and reconstruction."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from limner.errors import UsageError
from limner.generation.request import BatchRequest, GenerationRequest
from limner.models.base import DataInfo
from limner.models.vae.config import PRESETS, VAEConfig
from limner.models.vae.family import VAEFamily, reparameterize
from limner.models.vae.losses import kl_beta, kl_divergence, psnr
from limner.models.vae.quantizer import VectorQuantizer, codebook_usage, perplexity
from limner.training.config import TrainConfig
from limner.training.trainer import Trainer

CAPTIONS = ["red heart", "blue square", "green heart", "red star"]
INFO = DataInfo(resolution=16, channels=3, captions=CAPTIONS, num_classes=2, class_names=["cat", "dog"])


@pytest.fixture(autouse=True)
def one_thread_and_registry(monkeypatch):
    torch.set_num_threads(1)
    import limner.models.registry as registry

    monkeypatch.setitem(registry.FAMILIES, "vae", "limner.models.vae.family:VAEFamily")


def tiny(preset: str = "tiny", cond: str = "none", seed: int = 0, **overrides) -> VAEFamily:
    torch.manual_seed(seed)
    return VAEFamily.create(preset, INFO, cond, overrides=overrides)


def cond_inputs(fam: VAEFamily, cond: str, B: int):
    if cond == "class":
        return fam.encoder.prepare(labels=[i % 2 for i in range(B)])
    if cond == "text":
        return fam.encoder.prepare(captions=[CAPTIONS[i % 4] for i in range(B)])
    return None


# ---------------------------------------------------------------------------------------------
# Shapes and configuration
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "vq-tiny"])
@pytest.mark.parametrize("cond", ["none", "class", "text"])
def test_shapes_for_every_variant_and_condition(preset, cond):
    fam = tiny(preset, cond)
    assert fam.cond_kind.value == cond
    assert fam.config.variant == ("vq" if preset.startswith("vq") else "kl")
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    out = fam.model(x, cond_inputs(fam, cond, 3), torch.tensor([True, False, False]),
                    torch.Generator().manual_seed(0))
    assert out.recon.shape == x.shape
    C, h, w = fam.latent_shape
    assert (h, w) == (8, 8)
    if fam.config.variant == "kl":
        assert out.mu.shape == out.logvar.shape == (3, C, h, w) and out.quant is None
    else:
        assert out.quant.indices.shape == (3, h, w) and out.quant.z_q.shape == (3, C, h, w)
    z = fam.encode(x)
    assert z.shape == (3, C, h, w)
    assert fam.decode(z).shape == x.shape
    prompts = CAPTIONS[:2] if cond == "text" else None
    labels = ["dog", 0] if cond == "class" else None
    img = fam.generate(BatchRequest(seeds=[1, 2], prompts=prompts, labels=labels)).images
    assert img.shape == (2, 3, 16, 16) and img.dtype == torch.uint8
    rec = fam.reconstruct(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    assert rec.shape == (2, 3, 16, 16) and rec.dtype == torch.uint8


def test_every_parameter_gets_a_gradient_for_ddp():
    """DDP without find_unused_parameters needs every trainable parameter in the graph."""
    for preset in ("tiny", "vq-tiny"):
        for cond in ("none", "class", "text"):
            fam = tiny(preset, cond)
            x = torch.rand(2, 3, 16, 16) * 2 - 1
            out = fam.model(x, cond_inputs(fam, cond, 2), torch.tensor([True, False]))
            loss, _ = fam._model_loss(out, x, 0.1, adversarial=False)
            loss.backward()
            assert [n for n, p in fam.model.named_parameters() if p.grad is None] == []


def test_tokens_for_vq_only():
    vq = tiny("vq-tiny")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    tokens = vq.encode_tokens(x)
    assert tokens.shape == (2, 8, 8) and tokens.dtype == torch.int64
    assert torch.equal(vq.decode_tokens(tokens), vq.decode(vq.encode(x)))
    with pytest.raises(UsageError, match="continuous"):
        tiny("tiny").encode_tokens(x)


def test_presets_and_variant_override():
    assert {"tiny", "small", "base", "vq-tiny", "vq-small", "vq-base"} <= set(PRESETS)
    assert tiny("tiny", variant="vq").config.variant == "vq"
    assert tiny("vq-tiny").config.latent_channels == 8
    assert not tiny("tiny").config.adversarial and "D" not in tiny("tiny").modules()
    assert VAEFamily.train_defaults("vq-tiny") == VAEFamily.train_defaults("tiny")
    with pytest.raises(UsageError, match="--preset"):
        VAEFamily.create("huge", INFO, "none")


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"feature_weight": 1.0}, "adversarial"),
        ({"variant": "gauss"}, "variant"),
        ({"recon_loss": "l2"}, "recon_loss"),
        ({"widths": [16, 32, 32, 32, 32, 32]}, "divisible"),
        ({"beta": -1.0}, "beta"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_config_is_a_usage_error(overrides, needle):
    with pytest.raises(UsageError, match=needle):
        tiny(**overrides)


def test_config_round_trip_rebuilds_same_state_dict():
    fam = tiny("vq-tiny", "text", adversarial=True, disc_layers=2)
    again = VAEFamily.from_config(json.loads(json.dumps(fam.config_dict())))
    for name, module in fam.modules().items():
        a, b = module.state_dict(), again.modules()[name].state_dict()
        assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    with pytest.raises(UsageError, match="unknown vae config"):
        VAEConfig.from_dict({**fam.config_dict(), "typo": 1})


# ---------------------------------------------------------------------------------------------
# KL variant maths
# ---------------------------------------------------------------------------------------------


def test_kl_matches_closed_form_on_a_hand_example():
    # Two latent elements: N(1, 1) and N(0, 4) against N(0, 1):
    # 0.5 * [(1 + 1 - 1 - 0) + (0 + 4 - 1 - log 4)] = 0.5 * (4 - log 4)
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)]])
    assert kl_divergence(mu, logvar).item() == pytest.approx(0.5 * (4 - math.log(4)), rel=1e-6)
    # and torch.distributions agrees on random moments
    mu, logvar = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).flatten(1).sum(1)
    assert torch.allclose(kl_divergence(mu, logvar), ref, atol=1e-5)
    assert torch.equal(kl_divergence(torch.zeros(2, 5), torch.zeros(2, 5)), torch.zeros(2))


def test_reparameterisation_gradient_flows_to_mu_and_logvar():
    mu = torch.randn(2, 4, 3, 3, requires_grad=True)
    logvar = torch.randn(2, 4, 3, 3, requires_grad=True)
    z = reparameterize(mu, logvar, torch.Generator().manual_seed(5))
    z.sum().backward()
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(z, mu + (0.5 * logvar).exp() * eps)
    assert torch.equal(mu.grad, torch.ones_like(mu))  # dz/dmu = 1
    assert torch.allclose(logvar.grad, 0.5 * (0.5 * logvar.detach()).exp() * eps)  # dz/dlogvar
    # ... and through the network: both halves of the encoder head (mu and logvar) learn
    fam = tiny("tiny")
    out = fam.model(torch.rand(2, 3, 16, 16) * 2 - 1, generator=torch.Generator().manual_seed(0))
    out.recon.square().mean().backward()
    grad = fam.model.encoder.conv_out.weight.grad  # [2 * C_z, ...]: mu channels, then logvar
    C = fam.latent_shape[0]
    assert grad[:C].abs().sum() > 0 and grad[C:].abs().sum() > 0


def test_beta_warmup_schedule():
    assert [kl_beta(s, 0.5, 10) for s in (0, 1, 5, 10, 11, 1000)] == [0.0, 0.05, 0.25, 0.5, 0.5, 0.5]
    assert kl_beta(0, 0.5, 0) == 0.5


# ---------------------------------------------------------------------------------------------
# VQ variant: the codebook
# ---------------------------------------------------------------------------------------------


def _quantizer(codes, update="ema", counts=None, **kwargs) -> VectorQuantizer:
    codes = torch.tensor(codes, dtype=torch.float32)
    q = VectorQuantizer(len(codes), codes.shape[1], update=update, **kwargs)
    with torch.no_grad():
        q.codebook.copy_(codes)
        if counts is not None:
            q.cluster_size.copy_(torch.tensor(counts, dtype=torch.float32))
            if update == "ema":
                q.embed_sum.copy_(codes * q.cluster_size[:, None])
    return q


def _latents(rows) -> torch.Tensor:
    """Rows [N, D] → [1, D, 1, N] latents."""
    return torch.tensor(rows, dtype=torch.float32).t()[None, :, None, :].contiguous()


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_straight_through_gradient_reaches_the_encoder(update):
    q = _quantizer([[0.0, 0.0], [3.0, 3.0]], update=update, counts=[5.0, 5.0])
    z_e = _latents([[0.2, -0.1], [2.5, 3.5], [0.4, 0.1]]).requires_grad_(True)
    codes = q.codebook.detach().clone()  # (a training forward updates them afterwards)
    out = q(z_e)
    assert out.indices.flatten().tolist() == [0, 1, 0]
    assert torch.allclose(out.z_q.detach(), codes[[0, 1, 0]].t()[None, :, None, :])  # forward: codes
    out.z_q.sum().backward()
    assert torch.equal(z_e.grad, torch.ones_like(z_e))  # backward: identity
    # through the real model the encoder's first layer learns from the reconstruction alone
    fam = tiny("vq-tiny", codebook_update=update)
    fam.model(torch.rand(2, 3, 16, 16) * 2 - 1).recon.square().mean().backward()
    assert fam.model.encoder.conv_in.weight.grad.abs().sum() > 0


def test_codebook_loss_trains_codes_in_loss_mode():
    q = _quantizer([[0.0, 0.0], [3.0, 3.0]], update="loss", counts=[5.0, 5.0])
    q(_latents([[1.0, 1.0]])).loss.backward()
    assert q.codebook.grad[0].abs().sum() > 0 and torch.equal(q.codebook.grad[1], torch.zeros(2))


def test_ema_update_moves_codes_toward_assigned_encodings():
    q = _quantizer([[0.0, 0.0], [10.0, 10.0]], counts=[1.0, 1.0], decay=0.5, eps=0.0,
                   dead_threshold=0.0)
    q.train()
    q(_latents([[2.0, 2.0], [2.0, 0.0]]))  # both nearest to code 0, mean (2, 1)
    # N = 0.5 * [1, 1] + 0.5 * [2, 0] = [1.5, 0.5]; m_0 = 0.5 * 0 + 0.5 * (4, 2) = (2, 1)
    assert torch.allclose(q.cluster_size, torch.tensor([1.5, 0.5]))
    assert torch.allclose(q.codebook[0], torch.tensor([2.0, 1.0]) / 1.5)
    assert torch.allclose(q.codebook[1], torch.tensor([10.0, 10.0]))  # unassigned: unchanged
    before = torch.tensor([0.0, 0.0]).sub(torch.tensor([2.0, 1.0])).norm()
    assert q.codebook[0].sub(torch.tensor([2.0, 1.0])).norm() < before
    q.eval()  # no update outside training
    state = {k: v.clone() for k, v in q.state_dict().items()}
    q(_latents([[5.0, 5.0]]))
    assert all(torch.equal(state[k], v) for k, v in q.state_dict().items())


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_dead_codes_are_restarted_from_batch_encodings(update):
    q = _quantizer([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0], [-1.0, -1.0]], update=update,
                   counts=[5.0, 5.0, 0.0, 5.0], dead_threshold=1.0)
    q.train()
    rows = [[0.1, 0.0], [0.9, 1.1], [-1.2, -0.8], [0.0, 0.2], [1.0, 0.9]]
    q(_latents(rows), torch.Generator().manual_seed(0))
    assert q.codebook[2].tolist() in torch.tensor(rows).tolist()  # moved onto the data
    assert q.cluster_size[2].item() == 1.0  # and counted as just used
    assert (q.cluster_size[[0, 1, 3]] >= 1.0).all()  # live codes are not restarted
    again = _quantizer([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0], [-1.0, -1.0]], update=update,
                       counts=[5.0, 5.0, 0.0, 5.0], dead_threshold=1.0)
    again.train()
    again(_latents(rows), torch.Generator().manual_seed(0))
    assert torch.equal(again.codebook, q.codebook)  # the generator decides the choice


def test_codebook_usage_and_perplexity_on_hand_examples():
    assert codebook_usage(torch.tensor([2.0, 2.0, 0.0, 0.0])) == 0.5
    assert perplexity(torch.tensor([2.0, 2.0, 0.0, 0.0])) == pytest.approx(2.0)
    assert perplexity(torch.tensor([7.0, 0.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert perplexity(torch.tensor([3.0, 3.0, 3.0, 3.0])) == pytest.approx(4.0)
    assert codebook_usage(torch.tensor([1.0, 1.0, 1.0, 1.0])) == 1.0
    # 3:1 split: exp(-(0.75 ln 0.75 + 0.25 ln 0.25))
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert perplexity(torch.tensor([3.0, 1.0])) == pytest.approx(expected)


def test_vq_prior_is_the_usage_histogram():
    fam = tiny("vq-tiny")
    q = fam.model.quantizer
    assert torch.allclose(q.prior(), torch.full((64,), 1 / 64))  # untrained: uniform
    with torch.no_grad():
        q.cluster_size.zero_()
        q.cluster_size[3] = 10.0
    z = fam._prior_latents([0, 1], 1.0)
    assert torch.equal(z, q.codebook[3][None, :, None, None].expand(2, -1, 8, 8))
    with torch.no_grad():
        q.cluster_size[5] = 30.0
    assert torch.equal(fam._prior_latents([0], 0.0), q.codebook[5][None, :, None, None].expand(1, -1, 8, 8))


# ---------------------------------------------------------------------------------------------
# Through the real trainer
# ---------------------------------------------------------------------------------------------


@dataclass
class Data:
    images: np.ndarray
    captions: list[str] | None
    labels: np.ndarray | None


def make_data(n: int = 8) -> Data:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    return Data(images, [CAPTIONS[i % 4] for i in range(n)], np.arange(n) % 2)


def make_trainer(run_dir: Path, family: VAEFamily, steps: int, *, resume: bool = False, **train):
    cfg = TrainConfig(**{**dict(steps=steps, batch_size=4, lr=1e-3, warmup_steps=2, log_every=1,
                                save_every=100, sample_every=0, tensorboard=False, ema_decay=0.9),
                         **train})
    run_config = {"family": {"name": "vae", "config": family.config_dict()}, "data": {"num_images": 8}}
    return Trainer(family, make_data(), cfg, run_dir, run_config=run_config, progress=False,
                   resume=resume)


def checkpoint(path: Path) -> dict:
    out = {p.name: load_file(str(p)) for p in sorted(path.glob("*.safetensors"))}
    out["state.pt"] = torch.load(path / "state.pt", weights_only=True)
    return out


def assert_same(a, b, where: str = "") -> None:
    """Bitwise equality of nested dicts/lists/tensors."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


RESUME_CASES = [
    ("tiny", "none", {}, 1),
    ("vq-tiny", "class", dict(adversarial=True, feature_weight=0.5, disc_layers=2, disc_channels=8,
                              disc_start=2), 2),
    ("vq-tiny", "text", dict(codebook_update="loss"), 1),
    ("tiny", "text", dict(adversarial=True, disc_loss="logistic", disc_layers=2, disc_channels=8), 1),
]


@pytest.mark.parametrize("preset, cond, overrides, accum", RESUME_CASES)
def test_training_is_finite_and_resume_equals_continue_bitwise(tmp_path, preset, cond, overrides, accum):
    N, k = 6, 3
    straight = make_trainer(tmp_path / "s", tiny(preset, cond, **overrides), N, grad_accum=accum)
    result = straight.fit()
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics
    expected = {"loss", "recon", "psnr"} | (
        {"kl", "beta"} if preset == "tiny" else {"commit", "codebook_usage", "perplexity"})
    if overrides.get("adversarial"):
        expected |= {"adv", "d_loss", "grad_norm/D"}
    assert expected <= set(result.metrics)

    make_trainer(tmp_path / "r", tiny(preset, cond, **overrides), k, grad_accum=accum).fit()
    other_init = tiny(preset, cond, seed=123, **overrides)  # everything must come from the checkpoint
    resumed = make_trainer(tmp_path / "r", other_init, N, resume=True, grad_accum=accum)
    assert resumed.step == k
    resumed.fit()
    final = f"checkpoints/step_{N:06d}"
    a, b = checkpoint(tmp_path / "r" / final), checkpoint(tmp_path / "s" / final)
    assert_same(a, b)
    if preset.startswith("vq"):  # the codebook statistics are saved, live and EMA, and trained
        for name in ("model.safetensors", "model_ema.safetensors"):
            assert a[name]["quantizer.cluster_size"].sum() > 0
        if overrides.get("codebook_update", "ema") == "ema":
            assert "quantizer.embed_sum" in a["model.safetensors"]


def test_kl_warmup_reaches_the_metrics(tmp_path):
    make_trainer(tmp_path, tiny("tiny", beta=0.5, beta_warmup=4), 6).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["beta"] for r in rows] == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]  # step s sees s-1 done


def test_bf16_vq_step_is_finite(tmp_path):
    result = make_trainer(tmp_path, tiny("vq-tiny"), 2, precision="bf16").fit()
    assert all(math.isfinite(v) for v in result.metrics.values())


# ---------------------------------------------------------------------------------------------
# Sampling and reconstruction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "vq-tiny"])
def test_generate_is_deterministic_per_seed(tmp_path, preset):
    make_trainer(tmp_path, tiny(preset, "class"), 2).fit()
    from limner.generation.pipeline import generate, load_run

    loaded = load_run(tmp_path)
    fam = loaded.family
    a = fam.generate(BatchRequest(seeds=[4, 7], labels=[1, 0])).images
    assert torch.equal(a, fam.generate(BatchRequest(seeds=[4, 7], labels=[1, 0])).images)
    alone = fam.generate(BatchRequest(seeds=[7], labels=[0])).images
    assert (alone[0].int() - a[1].int()).abs().max() <= 1  # same draw in another batch
    assert not torch.equal(a[0], a[1])
    hot = fam.generate(BatchRequest(seeds=[4, 7], labels=[1, 0], truncation=2.0)).images
    assert not torch.equal(hot, a)  # temperature scales the prior draw
    with pytest.raises(UsageError, match="truncation"):
        fam.generate(BatchRequest(seeds=[1], truncation=-1.0))
    images = generate(GenerationRequest(run=str(tmp_path), label="dog", seed=3, num=2), loaded=loaded)
    assert [g.record.seed for g in images] == [3, 4] and images[0].record.family == "vae"
    assert images[0].image.size == (16, 16)


def test_reconstruct_is_deterministic_and_checks_its_input():
    fam = tiny("tiny")
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    a = fam.reconstruct(images, batch_size=2)
    assert torch.equal(a, fam.reconstruct(images))
    assert fam.model.training  # the mode is restored
    with pytest.raises(UsageError, match="uint8"):
        fam.reconstruct(images.float())
    with pytest.raises(UsageError, match="uint8"):
        fam.reconstruct(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_psnr_convention():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert psnr(x, x, 255.0).tolist() == [math.inf, math.inf]  # identical: inf
    y = x.clone()
    y[0] = x[0].int().add(1).clamp(max=255).to(torch.uint8)
    y[0][x[0] == 255] = 254  # every pixel off by exactly 1 → MSE 1
    assert psnr(x, y, 255.0)[0].item() == pytest.approx(20 * math.log10(255))  # 48.13 dB
    # the same on the [-1, 1] scale with range 2
    xf, yf = x.float() / 127.5 - 1, y.float() / 127.5 - 1
    assert psnr(xf, yf, 2.0)[0].item() == pytest.approx(20 * math.log10(255), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# DDP: two CPU ranks keep identical weights and codebooks
# ---------------------------------------------------------------------------------------------

DDP_SCRIPT = '''
import hashlib, json, os, sys
import numpy as np, torch
torch.set_num_threads(1)
import limner.models.registry as registry
registry.FAMILIES["vae"] = "limner.models.vae.family:VAEFamily"
from types import SimpleNamespace
from limner.models.base import DataInfo
from limner.models.vae.family import VAEFamily
from limner.training.config import TrainConfig
from limner.training.trainer import Trainer

rng = np.random.default_rng(0)
data = SimpleNamespace(images=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
                       captions=None, labels=np.arange(16) % 2)
torch.manual_seed(0)
fam = VAEFamily.create("vq-tiny", DataInfo(16, 3, num_classes=2), "class", overrides=dict(
    adversarial=True, feature_weight=0.5, disc_layers=2, disc_channels=8, disc_start=1))
cfg = TrainConfig(steps=3, batch_size=8, lr=1e-3, warmup_steps=1, save_every=100, sample_every=0,
                  tensorboard=False, ema_decay=0.9, grad_accum=2)
trainer = Trainer(fam, data, cfg, sys.argv[1], run_config={"family": {"name": "vae", "config": fam.config_dict()},
                  "data": {}}, progress=False)
ddp = sorted(n for n, m in trainer.nets.items() if isinstance(m, torch.nn.parallel.DistributedDataParallel))
trainer.fit()
digest = hashlib.sha256()
for name, module in sorted(fam.modules().items()):
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode() + value.numpy().tobytes())
with open(os.path.join(sys.argv[2], "rank%s.json" % os.environ["RANK"]), "w") as f:
    json.dump({"digest": digest.hexdigest(), "rank": trainer.dist.rank, "world_size": trainer.dist.world_size,
               "ddp": ddp, "trainable": sorted(fam.modules())}, f)
'''


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_ddp_ranks_agree_on_weights_and_codebook(tmp_path):
    """VQ + discriminator + feature loss + accumulation under DDP: no unused-parameter error
    (D is called directly in the model's sub-step) and the codebook statistics stay in sync."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_vae.py"
    script.write_text(DDP_SCRIPT)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp_path / "run"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # two single-process runs would agree too: each rank must have run as one of two, with its
    # networks under DistributedDataParallel
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert all(r["ddp"] == r["trainable"] for r in ranks), ranks
    assert ranks[0]["digest"] == ranks[1]["digest"]


# ---------------------------------------------------------------------------------------------
# The prior fitted to the aggregate posterior
# ---------------------------------------------------------------------------------------------


def _gaussian_batches(mean, cov, batches, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = torch.linalg.cholesky(cov)
    for _ in range(batches):
        z = mean + torch.randn(size, len(mean), generator=g, dtype=torch.float64) @ L.T
        yield z.float().view(size, -1, 1, 1)


def test_fitted_prior_recovers_mean_and_covariance_and_samples_from_them():
    from limner.models.vae.prior import FittedGaussianPrior

    D = 6
    A = torch.randn(D, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cov, mean = A @ A.T / D + 0.1 * torch.eye(D, dtype=torch.float64), torch.linspace(-2, 3, D, dtype=torch.float64)
    prior = FittedGaussianPrior(D, decay=0.999)
    var = 0.05  # every posterior also has variance 0.05 per dimension: q(z)'s covariance adds it
    for mu in _gaussian_batches(mean, cov, 400, 256):
        prior.update(mu, torch.full_like(mu, math.log(var)))
    assert prior.fitted
    fitted_cov = prior.moment2[-1].double() - torch.outer(prior.mean[-1].double(), prior.mean[-1].double())
    assert torch.allclose(prior.mean[-1].double(), mean, atol=0.05)
    assert torch.allclose(fitted_cov, cov + var * torch.eye(D, dtype=torch.float64), atol=0.08)
    eps = torch.randn(20000, D, 1, 1, generator=torch.Generator().manual_seed(2))
    z = prior.sample(eps).flatten(1).double()
    assert torch.allclose(z.mean(0), mean, atol=0.06)
    assert torch.allclose(torch.cov(z.T), cov + var * torch.eye(D, dtype=torch.float64), atol=0.1)


def test_fitted_prior_is_diagonal_for_wide_latents_and_identity_before_any_update():
    from limner.models.vae.prior import FULL_COV_MAX, FittedGaussianPrior

    prior = FittedGaussianPrior(FULL_COV_MAX + 1)
    eps = torch.randn(3, FULL_COV_MAX + 1, 1, 1)
    assert torch.equal(prior.sample(eps), eps)  # not fitted yet: N(0, I)
    assert prior.moment2.shape == (1, FULL_COV_MAX + 1)
    mu = torch.full((8, FULL_COV_MAX + 1, 1, 1), 2.0)
    prior.update(mu, torch.full_like(mu, math.log(0.25)))
    assert torch.allclose(prior.sample(torch.zeros_like(eps)), torch.full_like(eps, 2.0))
    assert torch.allclose(prior.sample(torch.ones_like(eps)), torch.full_like(eps, 2.5), atol=1e-4)  # sd 0.5


def test_kl_runs_sample_from_the_fitted_prior_and_old_configs_still_load(tmp_path):
    make_trainer(tmp_path, tiny("tiny", "class"), 3).fit()
    from limner.generation.pipeline import load_run

    fam = load_run(tmp_path).family
    ema = load_file(str(next((tmp_path / "checkpoints").glob("step_*")) / "model_ema.safetensors"))
    assert float(ema["prior.updates"][-1]) == 3 and ema["prior.mean"].abs().sum() > 0
    assert ema["prior.mean"].shape[0] == 3  # two classes + all data
    out = fam.generate(BatchRequest(seeds=[1], labels=[0]))
    assert out.extra["prior"] == "fitted"
    zero = fam._prior_latents([1], 0.0)  # temperature 0 = the fitted mean, not z = 0
    assert torch.allclose(zero.flatten(), fam.model.prior.mean[-1].float(), atol=1e-5)
    by_class = fam._prior_latents([1], 0.0, labels=[0])
    assert torch.allclose(by_class.flatten(), fam.model.prior.mean[0].float(), atol=1e-5)
    old = {**fam.config_dict(), "prior": "normal"}
    old.pop("prior")
    legacy = VAEFamily.from_config(old)  # a run from before the fitted prior
    assert legacy.model.prior is None and "prior.mean" not in legacy.model.state_dict()


def test_conditional_blocks_use_adaptive_norm_and_old_runs_keep_theirs():
    """New conditional VAEs modulate their norms with scale and shift; a config saved before
    that (no ``emb_mode``) rebuilds the add-before-norm blocks its weights fit."""
    fam = VAEFamily.create("tiny", INFO, "class")
    assert fam.config.emb_mode == "scale_shift"
    block = fam.model.decoder.blocks[0][0]
    assert block.cond_proj.out_features == 2 * block.block.conv2.out_channels
    old = fam.config_dict()
    old.pop("emb_mode")
    legacy = VAEFamily.from_config(old).model.decoder.blocks[0][0]
    assert legacy.cond_proj.out_features == legacy.block.conv2.out_channels


def test_class_conditional_prior_draws_from_each_class_gaussian():
    from limner.models.vae.prior import FittedGaussianPrior

    prior = FittedGaussianPrior(2, decay=0.99, classes=2)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        labels = torch.randint(0, 2, (64,), generator=g)
        mu = torch.randn(64, 2, generator=g) * 0.1 + torch.where(labels[:, None] == 0, -3.0, 3.0)
        prior.update(mu.view(64, 2, 1, 1), torch.full((64, 2, 1, 1), -10.0), labels)
    eps = torch.randn(500, 2, 1, 1, generator=g)
    z0 = prior.sample(eps, [0] * 500).flatten(1)
    z1 = prior.sample(eps, [1] * 500).flatten(1)
    pooled = prior.sample(eps).flatten(1)
    assert torch.allclose(z0.mean(0), torch.tensor([-3.0, -3.0]), atol=0.05) and z0.std(0).max() < 0.2
    assert torch.allclose(z1.mean(0), torch.tensor([3.0, 3.0]), atol=0.05)
    assert pooled.mean(0).abs().max() < 0.5 and pooled.std(0).min() > 2.5  # the mixture's spread
    assert torch.equal(prior.sample(eps[:2], [7, None]), prior.sample(eps[:2]))  # unknown -> all data
