"""The DiT backbone behind the EDM denoiser: adaLN-Zero starts as the identity block, the
condition and only the real text tokens steer it, patches go back where they came from, and
``--set family.backbone=dit`` builds it for pixel and latent diffusion (old configs still load)."""

from __future__ import annotations

import pytest
import torch

from limner.conditioning.base import Conditioning
from limner.errors import UsageError
from limner.models.base import DataInfo
from limner.models.diffusion.config import DiffusionConfig
from limner.models.diffusion.dit import DiT, DiTConfig, dit_config, unpatchify
from limner.models.diffusion.family import DiffusionFamily
from limner.models.diffusion.unet import UNet


def tiny(**kw) -> DiT:
    torch.manual_seed(0)
    return DiT(dit_config("tiny", in_channels=3, out_channels=3, resolution=8, **kw))


def perturb(model: torch.nn.Module) -> None:
    """Give the zero-initialised layers weights, as training would."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_adaln_zero_starts_at_zero_output():
    model = tiny(cond_dim=8)
    x = torch.randn(2, 3, 8, 8)
    out = model(x, torch.tensor([0.1, -0.5]), Conditioning(vector=torch.randn(2, 8)))
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))


def test_noise_level_and_class_vector_steer_the_output():
    model = tiny(cond_dim=8)
    perturb(model)
    x, v = torch.randn(1, 3, 8, 8), torch.randn(1, 8)
    a = model(x, torch.tensor([0.1]), Conditioning(vector=v))
    assert not torch.allclose(a, model(x, torch.tensor([0.7]), Conditioning(vector=v)))
    assert not torch.allclose(a, model(x, torch.tensor([0.1]), Conditioning(vector=-v)))


def test_cross_attention_reads_only_real_text_tokens():
    model = tiny(cond_dim=8, cross_attention=True)
    perturb(model)
    x = torch.randn(1, 3, 8, 8)
    tokens = torch.randn(1, 4, 8)
    mask = torch.tensor([[True, True, False, False]])
    changed = tokens.clone()
    changed[:, 2:] = torch.randn(1, 2, 8)  # padding only
    base = model(x, torch.tensor([0.2]), Conditioning(tokens=tokens, mask=mask))
    torch.testing.assert_close(base, model(x, torch.tensor([0.2]), Conditioning(tokens=changed, mask=mask)))
    changed[:, 0] += 1  # a real token
    assert not torch.allclose(base, model(x, torch.tensor([0.2]), Conditioning(tokens=changed, mask=mask)))


def test_unpatchify_puts_every_patch_back():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    p = 4
    patches = x.view(2, 3, 2, p, 2, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 4, p * p * 3)
    assert torch.equal(unpatchify(patches, p, 8, 8), x)


def test_backbone_setting_builds_a_dit_and_old_configs_load():
    info = DataInfo(resolution=8, channels=3, num_classes=3)
    fam = DiffusionFamily.create("tiny", info, "class", overrides={"backbone": "dit", "net": {"depth": 1}})
    assert isinstance(fam.model.backbone, DiT) and fam.config.net["depth"] == 1
    old = DiffusionFamily.create("tiny", info, "class", overrides={"unet": {"dropout": 0.1}}).config.to_dict()
    assert old["backbone"] == "unet" and old["net"]["dropout"] == 0.1
    old["unet"] = old.pop("net")  # a config.json written before the backbone was a choice
    del old["backbone"]
    assert isinstance(DiffusionFamily.from_config(old).model.backbone, UNet)
    with pytest.raises(UsageError) as exc:
        DiffusionFamily.create("tiny", info, "class", overrides={"backbone": "dit", "net": {"heads": 3}})
    assert exc.value.field == "family.net.heads"
    with pytest.raises(UsageError, match="family.net.in_channels: not settable"):
        DiffusionFamily.create("tiny", info, "class", overrides={"backbone": "dit", "net": {"in_channels": 4}})
    assert DiTConfig.from_dict(fam.config.net).tokens == 4
    assert DiffusionConfig.from_dict(fam.config.to_dict()).backbone == "dit"


def test_latent_diffusion_takes_the_dit_backbone(tmp_path, noise_images):
    from limner.cli.main import main
    from limner.models.latent_diffusion.family import LatentDiffusionFamily

    data = noise_images(tmp_path / "data", seed=0)
    vae = tmp_path / "vae"
    assert main(["train", str(data), "--family", "vae", "--preset", "tiny", "--cond", "none", "--out", str(vae),
                 "--resolution", "16", "--steps", "1", "--batch-size", "2", "--sample-every", "0",
                 "--no-progress"]) == 0
    fam = LatentDiffusionFamily.create("tiny", DataInfo(resolution=16, channels=3), "none", vae=vae,
                                       overrides={"backbone": "dit", "diffusion": {"net": {"patch_size": 2}}})
    backbone = fam.diffusion.model.backbone
    assert isinstance(backbone, DiT) and backbone.config.resolution == 8 and backbone.config.patch_size == 2
    from limner.generation.request import BatchRequest

    out = fam.generate(BatchRequest(seeds=[1], steps=2)).images
    assert out.shape == (1, 3, 16, 16)
