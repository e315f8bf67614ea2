"""The GAN family: shapes per condition kind, training through the real trainer with every logged
scalar, bitwise resume (both optimizers, EMA G, augmentation p), per-seed generation, truncation,
DiffAugment, R1 and ADA, and the workflow/pipeline end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from limner.data.batch import Batch
from limner.errors import UsageError
from limner.generation.request import BatchRequest, GenerationRequest
from limner.models.base import DataInfo
from limner.models.gan.augment import (
    AdaptiveProbability,
    DiffAugment,
    augment_color,
    augment_cutout,
    augment_translation,
)
from limner.models.gan.config import GANConfig
from limner.models.gan.discriminator import minibatch_std
from limner.models.gan.family import GANFamily
from limner.models.gan.generator import feature_sizes
from limner.models.gan.losses import LogisticLoss, R1Penalty, mode_seeking
from limner.training.callbacks import Callback
from limner.training.config import TrainConfig
from limner.training.trainer import Trainer

torch.set_num_threads(1)

KINDS = ["none", "class", "text"]
CAPTIONS = ["red heart", "blue square", "green heart"]
LOGGED = {"loss", "loss_D", "loss_G", "D_real", "D_fake", "aug_p", "ms"}


# ---------------------------------------------------------------------------------------------
# Helpers


@dataclass
class Data:
    images: np.ndarray
    captions: list[str] | None
    labels: np.ndarray | None


def data(n: int = 16, size: int = 16, channels: int = 3) -> Data:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    return Data(images, [CAPTIONS[i % 3] for i in range(n)], np.arange(n) % 3)


def info(kind: str, size: int = 16, channels: int = 3) -> DataInfo:
    return DataInfo(resolution=size, channels=channels, captions=CAPTIONS if kind == "text" else None,
                    num_classes=3 if kind == "class" else None)


def family(kind: str = "none", seed: int = 0, **overrides) -> GANFamily:
    torch.manual_seed(seed)
    return GANFamily.create("tiny", info(kind), kind, overrides=overrides)


def cond_request(kind: str, n: int) -> dict:
    if kind == "class":
        return {"labels": [i % 3 for i in range(n)]}
    if kind == "text":
        return {"prompts": [CAPTIONS[i % 3] for i in range(n)]}
    return {}


class Capture(Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_step_end(self, trainer, step, metrics):
        self.rows.append(dict(metrics))


def trainer(fam: GANFamily, run_dir: Path, *, resume: bool = False, callbacks=(), **train) -> Trainer:
    cfg = TrainConfig.from_dict({**GANFamily.train_defaults("tiny"), "tensorboard": False,
                                 "save_every": 0, **train})
    run_config = {"family": {"name": "gan", "config": fam.config_dict()}}
    return Trainer(fam, data(), cfg, run_dir, run_config=run_config, callbacks=callbacks,
                   progress=False, resume=resume)


def checkpoint_contents(ckpt: Path) -> dict:
    out = {p.name: load_file(str(p)) for p in sorted(ckpt.glob("*.safetensors"))}
    out["state.pt"] = torch.load(ckpt / "state.pt", weights_only=True)
    return out


def assert_same(a, b, where: str = "") -> None:
    """Recursive bitwise equality of nested dicts/lists/tensors/values."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"keys differ at {where}: {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ---------------------------------------------------------------------------------------------
# Networks


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_for_every_condition_kind(kind):
    fam = family(kind)
    micro = Batch(images=torch.zeros(2, 3, 16, 16), indices=torch.arange(2),
                  captions=CAPTIONS[:2], labels=torch.tensor([0, 2]))
    inputs = fam.gan_step.condition_inputs(micro)
    z = torch.randn(2, fam.G.config.z_dim)
    x = fam.G(z, inputs)
    assert x.shape == (2, 3, 16, 16)
    assert fam.D(x, inputs).shape == (2,)
    out = fam.generate(BatchRequest(seeds=[1, 2], **cond_request(kind, 2)))
    assert out.images.shape == (2, 3, 16, 16) and out.images.dtype == torch.uint8
    assert fam.cond_kind.value == kind


def test_grayscale_and_non_power_of_two_resolution():
    torch.manual_seed(0)
    fam = GANFamily.create("tiny", DataInfo(resolution=24, channels=1), "none")
    assert feature_sizes(24) == [6, 12, 24] and feature_sizes(16) == [4, 8, 16]
    x = fam.G(torch.randn(3, fam.G.config.z_dim))
    assert x.shape == (3, 1, 24, 24) and fam.D(x).shape == (3,)
    with pytest.raises(UsageError):
        GANFamily.create("tiny", DataInfo(resolution=2, channels=3), "none")


def test_minibatch_std_appends_group_std():
    x = torch.randn(6, 4, 2, 2)
    y = minibatch_std(x, group_size=4)  # 4 does not divide 6: groups of 3
    assert y.shape == (6, 5, 2, 2)
    groups = x.reshape(3, 2, 4, 2, 2)  # images b, b + 2, b + 4
    expected = (groups.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [2]
    assert torch.allclose(y[:, 4, 0, 0], expected.repeat(3))


def test_every_trainable_parameter_is_in_one_module_and_one_optimizer():
    fam = family("text")
    specs = fam.optimizers()
    assert set(specs) == {"G", "D"} and fam.ema_names() == ["G"]
    assert set(fam.modules()) == {"G", "D"}
    in_opt = {name: {id(p) for p in spec.params} for name, spec in specs.items()}
    assert not in_opt["G"] & in_opt["D"]
    for name, module in fam.modules().items():
        assert in_opt[name] == {id(p) for p in module.parameters() if p.requires_grad}
    # A GAN never draws the null condition: those parameters are frozen (DDP needs every
    # trainable parameter to get a gradient), everything else trains.
    frozen = {n for n, p in fam.G.named_parameters() if not p.requires_grad}
    assert frozen == {"encoder.null_vector", "encoder.null_token"}
    assert fam.D.encoder is not fam.G.encoder


def test_config_round_trip_and_unknown_keys():
    fam = family("class", r1_gamma=0.5)
    again = GANFamily.from_config(json.loads(json.dumps(fam.config_dict())))
    assert again.config == fam.config and again.config.r1_gamma == 0.5
    for a, b in ((fam.G, again.G), (fam.D, again.D)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
    with pytest.raises(UsageError, match="unknown gan config"):
        GANConfig.from_dict({**fam.config_dict(), "typo": 1})
    with pytest.raises(UsageError, match="augmentation"):
        family(augment=["rotate"])
    with pytest.raises(UsageError, match="preset"):
        GANFamily.create("huge", info("none"), "none")


def test_train_defaults_are_a_gan_recipe():
    for preset in ("tiny", "small", "base"):
        cfg = TrainConfig.from_dict(GANFamily.train_defaults(preset)).validate()
        assert cfg.betas == (0.0, 0.99) and cfg.warmup_steps == 0 and cfg.grad_clip is None
        assert 1e-3 <= cfg.lr <= 3e-3


# ---------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("kind", KINDS)
def test_trains_through_the_trainer_and_logs_gan_dynamics(tmp_path, kind):
    fam = family(kind)
    capture = Capture()
    before = {n: p.requires_grad for n, p in fam.D.named_parameters()}
    result = trainer(fam, tmp_path / "run", callbacks=[capture], steps=3, log_every=1).fit()
    assert result.step == 3
    for row in capture.rows:
        assert LOGGED <= set(row)
        assert all(math.isfinite(v) for v in row.values())
        assert row["loss"] == row["loss_G"]
    assert "r1" in capture.rows[0] and "r1" not in capture.rows[1]  # lazy: every 4th step
    assert capture.rows[0]["r1"] > 0
    assert {n: p.requires_grad for n, p in fam.D.named_parameters()} == before
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert LOGGED | {"grad_norm/D", "grad_norm/G"} <= set(logged[-1])
    assert fam.G.mapping.w_avg.abs().sum() > 0  # the truncation centre is tracked


def test_resume_equals_continue_bitwise(tmp_path):
    """3 steps, stop, a fresh family resumes to 6 == 6 steps straight: G, D, G_ema, both Adam
    states, the LR schedules, the RNGs and ADA's p and partial statistics."""
    overrides = dict(augment_p=0.5, r1_interval=2, ada_interval=2)
    train = dict(steps=6, grad_accum=2, batch_size=8)
    trainer(family("class", **overrides), tmp_path / "straight", **train).fit()
    trainer(family("class", **overrides), tmp_path / "run", **{**train, "steps": 3}).fit()
    resumed = family("class", seed=123, **overrides)  # different init: everything must be loaded
    trainer(resumed, tmp_path / "run", resume=True, **train).fit()

    final = "checkpoints/step_000006"
    a = checkpoint_contents(tmp_path / "straight" / final)
    b = checkpoint_contents(tmp_path / "run" / final)
    assert set(a) == {"G.safetensors", "D.safetensors", "G_ema.safetensors", "state.pt"}
    assert_same(a, b)
    state = a["state.pt"]
    assert set(state["optimizers"]) == {"G", "D"}
    assert state["family"]["ada"]["p"] != 0.5  # p moved, and resumed exactly
    mid = torch.load(tmp_path / "run" / "checkpoints/step_000003/state.pt", weights_only=True)
    assert mid["family"]["ada"]["count"] > 0  # resumed mid-interval: partial r_t statistics kept


# ---------------------------------------------------------------------------------------------
# Generation


def trained_looking(kind: str) -> GANFamily:
    fam = family(kind)
    fam.G.mapping.w_avg.normal_()
    return fam


@pytest.mark.parametrize("kind", KINDS)
def test_generate_is_deterministic_and_each_image_depends_only_on_its_seed(kind):
    fam = trained_looking(kind)
    for psi in (1.0, 0.5):
        batch = BatchRequest(seeds=[5, 9, 11], truncation=psi, **cond_request(kind, 3))
        a, b = fam.generate(batch).images, fam.generate(batch).images
        assert torch.equal(a, b)
        req = cond_request(kind, 3)
        single = BatchRequest(seeds=[9], truncation=psi, **{k: v[1:2] for k, v in req.items()})
        alone = fam.generate(single).images[0]
        # Bitwise on the CPUs we test on; allow one grey level where a BLAS kernel is not
        # batch-size invariant.
        assert (alone.int() - a[1].int()).abs().max() <= 1
        assert not torch.equal(a[0], a[1])


def test_truncation_zero_gives_the_centre_for_every_seed():
    fam = trained_looking("none")
    out = fam.generate(BatchRequest(seeds=[1, 2, 3], truncation=0.0)).images
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    plain = fam.generate(BatchRequest(seeds=[1, 2])).images
    assert torch.equal(plain, fam.generate(BatchRequest(seeds=[1, 2], truncation=1.0)).images)
    assert not torch.equal(plain[0], plain[1])


def test_truncation_for_a_condition_pulls_toward_that_condition():
    fam = trained_looking("class")
    out = fam.generate(BatchRequest(seeds=[1, 2, 3], labels=[0, 0, 2], truncation=0.0)).images
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], out[2])
    with pytest.raises(UsageError, match="truncation"):
        fam.generate(BatchRequest(seeds=[1], labels=[0], truncation=float("nan")))


def test_generate_ignores_guidance_and_sampler_settings():
    fam = trained_looking("text")
    base = dict(seeds=[4], prompts=["red heart"])
    plain = fam.generate(BatchRequest(**base)).images
    other = fam.generate(BatchRequest(**base, cfg=7.0, sampler="heun", steps=3, negative="blue")).images
    assert torch.equal(plain, other)
    assert not torch.equal(plain, fam.generate(BatchRequest(seeds=[4], prompts=["blue square"])).images)


# ---------------------------------------------------------------------------------------------
# Augmentation, losses, ADA


def test_diffaugment_is_a_no_op_at_p_zero():
    x = torch.randn(4, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    aug = DiffAugment(["color", "translation", "cutout"])
    assert aug(x, 0.0, gen) is x
    assert torch.equal(gen.get_state(), state)  # no random numbers drawn either
    y = aug(x, 1.0, gen)
    assert y.shape == x.shape and not torch.equal(x, y)


@pytest.mark.parametrize("op", [augment_color, augment_translation, augment_cutout])
def test_each_augmentation_is_differentiable(op):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)

    def fn(t):  # the same random draw on every call
        return op(t, 1.0, torch.Generator().manual_seed(3))

    assert torch.autograd.gradcheck(fn, (x,))
    fn(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_translation_and_cutout_move_and_remove_pixels():
    x = torch.arange(64.0).view(1, 1, 8, 8) + 1
    for seed in range(20):
        y = augment_translation(x, 1.0, torch.Generator().manual_seed(seed))
        kept = y[y != 0]
        assert len(kept) >= 49 and set(kept.tolist()) <= set(x.flatten().tolist())
        c = augment_cutout(x, 1.0, torch.Generator().manual_seed(seed))
        assert 4 <= int((c == 0).sum()) <= 16  # a 4x4 square, clipped at the border


def test_r1_penalty_equals_hand_computed_gradient_norm():
    a = torch.randn(1, 2, 3, 3)

    def D(x):  # D(x) = sum a x^2, so grad_x D = 2 a x
        return (a * x.square()).sum(dim=(1, 2, 3))

    x = torch.randn(4, 2, 3, 3, requires_grad=True)
    r1 = R1Penalty(gamma=1.0)(D(x), x)
    expected = (2 * a * x.detach()).square().sum(dim=(1, 2, 3))
    assert torch.allclose(r1, expected)
    r1.sum().backward()  # create_graph: the penalty itself is differentiable
    assert torch.allclose(x.grad, 2 * (2 * a) ** 2 * x.detach())


def test_r1_is_lazy_and_scaled_by_its_interval():
    r1 = R1Penalty(gamma=0.1, interval=4)
    assert [r1.due(s) for s in range(6)] == [True, False, False, False, True, False]
    assert r1.weight == pytest.approx(0.1 / 2 * 4)
    assert not R1Penalty(gamma=0.0).due(0)


def test_logistic_loss_values():
    zero = torch.zeros(3)
    assert torch.allclose(LogisticLoss.discriminator(zero, zero), torch.full((3,), 2 * math.log(2)))
    assert torch.allclose(LogisticLoss.generator(zero), torch.full((3,), math.log(2)))
    big = torch.full((1,), 30.0)
    assert LogisticLoss.discriminator(big, -big).item() < 1e-6  # confident and right: ~0


def test_mode_seeking_term_is_the_inverse_image_to_latent_distance_ratio():
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [1.0, 3.0], [9.0, 9.0]])
    x = torch.zeros(5, 1, 2, 2)
    x[2] += 0.5  # pair (0, 2): image distance 0.5, latent distance 1
    x[4] += 7.0  # pair (1, 3): image distance 0, latent distance 1; row 4 has no pair
    # mean image distance 0.25 over mean latent distance 1 -> 1 / 0.25; row 4 (odd) is left out
    assert mode_seeking(x, z).item() == pytest.approx(1 / (0.25 + 1e-5))
    same = mode_seeking(torch.zeros(4, 1, 2, 2), torch.randn(4, 3))
    assert same.item() == pytest.approx(1e5)  # a generator that ignores z is penalised hard


@pytest.mark.parametrize("kind", ["class", "text"])
def test_mode_seeking_pairs_share_conditions_with_other_latents(kind):
    fam = family(kind)
    batch = Batch(images=torch.zeros(5, 3, 16, 16), indices=torch.arange(5), captions=[CAPTIONS[i % 3] for i in range(5)],
                  labels=torch.arange(5) % 3)
    plain = fam.gan_step.condition_inputs(batch)
    paired = fam.gan_step.condition_inputs(batch, paired=True)
    field = "labels" if kind == "class" else "token_ids"
    a, b = getattr(plain, field), getattr(paired, field)
    assert torch.equal(b[:2], a[:2]) and torch.equal(b[2:4], a[:2]) and torch.equal(b[4], a[4])
    assert fam.config.mode_seeking > 0 and GANFamily.from_config(
        {k: v for k, v in fam.config_dict().items() if k != "mode_seeking"}).config.mode_seeking == 0


def test_ada_moves_p_toward_the_target():
    ada = AdaptiveProbability(p=0.5, target=0.6, interval=2, kimg=0.1)
    ada.observe(torch.ones(10))  # r_t = 1 > 0.6: D overfits, more augmentation
    assert ada.end_step(1) is None and ada.p == 0.5  # not due yet
    ada.observe(torch.ones(10))
    assert ada.end_step(2) == 1.0
    assert ada.p == pytest.approx(0.5 + 20 / 100)
    state = ada.state_dict()
    ada.observe(-torch.ones(100))
    assert ada.end_step(4) == -1.0 and ada.p == 0.0  # clamped at 0
    again = AdaptiveProbability(p=0.0, target=0.6, interval=2, kimg=0.1)
    again.load_state_dict(state)
    assert again.p == pytest.approx(0.7)
    fixed = AdaptiveProbability(p=0.3, target=None, interval=1, kimg=1)
    fixed.observe(torch.ones(4))
    assert fixed.end_step(1) is None and fixed.p == 0.3


# ---------------------------------------------------------------------------------------------
# End to end


def test_workflow_train_load_run_and_generate(tmp_path, monkeypatch):
    from limner.generation import pipeline
    from limner.models import registry
    from limner.workflows import TrainOptions, train

    monkeypatch.setitem(registry.FAMILIES, "gan", "limner.models.gan.family:GANFamily")
    rng = np.random.default_rng(0)
    npz = tmp_path / "d.npz"
    np.savez(npz, images=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), labels=np.arange(8) % 2)
    out = tmp_path / "run"
    result = train(TrainOptions(data=npz, out=out, family="gan", preset="tiny", resolution=16,
                                progress=False, cache_dir=tmp_path / "cache",
                                train={"steps": 2, "batch_size": 4, "save_every": 2,
                                       "sample_every": 2, "tensorboard": False}))
    assert result.step == 2 and math.isfinite(result.metrics["loss_D"])
    assert (out / "samples" / "step_000002.png").is_file()
    loaded = pipeline.load_run(out)
    assert loaded.family.name == "gan" and loaded.family.cond_kind.value == "class"
    request = GenerationRequest(run=str(out), label=1, seed=3, num=2, truncation=0.7)
    images = pipeline.generate(request, loaded=loaded)
    assert [g.record.seed for g in images] == [3, 4]
    assert images[0].record.truncation == 0.7 and images[0].record.family == "gan"
    assert images[0].image.size == (16, 16)
    again = pipeline.regenerate(images[1].record)
    assert np.array_equal(np.asarray(again.image), np.asarray(images[1].image))


DDP_SCRIPT = """
import hashlib, json, os, sys
import numpy as np, torch
sys.path.insert(0, {tests!r})
from test_gan import data, family, trainer
torch.set_num_threads(1)
fam = family("text", augment_p=0.5, r1_interval=2)
t = trainer(fam, {run!r}, steps=3, grad_accum=2)
wrapped = type(t.nets["D"]).__name__
t.fit()
h = hashlib.sha256()
for module in (fam.G, fam.D):
    for k, v in sorted(module.named_parameters()):
        h.update(k.encode() + v.detach().numpy().tobytes())
with open(os.path.join({report!r}, "rank" + os.environ["RANK"]), "w") as f:
    json.dump({{"digest": h.hexdigest(), "p": fam.ada.p, "wrapped": wrapped}}, f)
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_cpu_ranks_agree(tmp_path):
    """Under DDP (2 gloo ranks, R1 step, accumulation, text conditioning) both ranks end with the
    same weights and the same augmentation p (no unused-parameter errors)."""
    script = tmp_path / "ddp_gan.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), run=str(tmp_path / "run"),
                                        report=str(tmp_path)))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] and ranks[0]["wrapped"] == "DistributedDataParallel"
    assert "Grad strides do not match" not in proc.stderr
