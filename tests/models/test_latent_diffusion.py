"""The latent-diffusion family: trains on a tiny VAE's cached, scaled latents through the real
trainer, samples deterministically at the VAE's pixel resolution, resumes bitwise, carries its
own copy of the VAE, and refuses unusable VAE runs with errors that name ``--vae``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from limner.errors import UsageError
from limner.generation.pipeline import load_run
from limner.generation.request import BatchRequest
from limner.models.base import DataInfo
from limner.models.latent_diffusion.family import LatentDiffusionFamily, LatentSpace
from limner.models.vae.family import VAEFamily
from limner.workflows import TrainOptions, train

TRAIN = {"steps": 3, "batch_size": 4, "sample_every": 0, "save_every": 3}
INFO = DataInfo(resolution=16, channels=3, captions=["item 0", "item 1", "item 2"])


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_npz(path: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
             captions=np.array([f"item {i % 3}" for i in range(n)]))
    return path


def train_run(tmp: Path, data: Path, out: str, family: str, **kwargs) -> Path:
    train_cfg = {**TRAIN, **kwargs.pop("train", {})}
    train(TrainOptions(data=data, out=tmp / out, family=family, preset="tiny", resolution=16,
                       progress=False, cache_dir=tmp / "cache", train=train_cfg, **kwargs))
    return tmp / out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(data, VAE run, latent-diffusion run): a text-conditioned model on an unconditional VAE."""
    tmp = tmp_path_factory.mktemp("latent")
    data = make_npz(tmp / "d.npz")
    vae = train_run(tmp, data, "vae", "vae", cond="none")
    ld = train_run(tmp, data, "ld", "latent-diffusion", family_options={"vae": vae})
    return data, vae, ld


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoint_tensors(run: Path) -> dict[str, torch.Tensor]:
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    return {f"{f.stem}.{k}": v for f in sorted(ckpt.glob("*.safetensors"))
            for k, v in load_file(f).items()}


# ---------------------------------------------------------------------------------------------
# Training, loading, sampling
# ---------------------------------------------------------------------------------------------


def test_trains_with_finite_loss_and_a_unit_variance_scale(runs):
    _, vae, ld = runs
    loaded = load_run(ld)
    fam = loaded.family
    assert fam.name == "latent-diffusion" and fam.cond_kind.value == "text"
    scale = float(fam.latent_space.scale)
    assert np.isfinite(scale) and scale > 0
    metrics = [json.loads(line) for line in (ld / "metrics.jsonl").read_text().splitlines()]
    # a NaN loss is written as null (allow_nan=False): check the numbers themselves
    assert metrics and all(isinstance(m["loss"], float) and np.isfinite(m["loss"]) for m in metrics)
    assert fam.config.vae_run["path"] == str(vae.resolve())
    assert fam.config.vae_run["model_hash"] == load_run(vae).model_hash
    assert fam.config.diffusion["channels"] == fam.latent_shape[0] == 4
    assert fam.config.diffusion["resolution"] == fam.latent_shape[1] == 8


def test_generate_is_deterministic_per_seed_at_pixel_resolution(runs):
    fam = load_run(runs[2]).family
    req = BatchRequest(seeds=[1, 2], prompts=["item 1", "item 2"], steps=3)
    a, b = fam.generate(req).images, fam.generate(req).images
    assert a.shape == (2, 3, 16, 16) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    other = fam.generate(BatchRequest(seeds=[3, 4], prompts=["item 1", "item 2"], steps=3)).images
    assert not torch.equal(a, other)
    assert fam.config.sampler == "dpmpp_2m" and fam.config.steps == 20  # what records resolve


def test_dit_backbone_trains_reloads_samples_and_replays_its_record(runs, tmp_path):
    """Latent diffusion with ``--set family.backbone=dit`` on the tiny VAE run: trains through
    the real trainer, reloads from its folder with a DiT behind the denoiser, samples the same
    pixels twice, and a PNG's record replays bitwise (as the family contract test does for
    pixel diffusion's DiT)."""
    from limner.generation.pipeline import generate, regenerate, save_images
    from limner.generation.pngmeta import read_parameters, read_record
    from limner.generation.request import GenerationRequest
    from limner.models.diffusion.dit import DiT

    data, vae, _ = runs
    run = train_run(tmp_path, data, "ld-dit", "latent-diffusion", family_options={"vae": vae},
                    family_overrides={"backbone": "dit"}, train={"steps": 4, "save_every": 4})
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(isinstance(m["loss"], float) and np.isfinite(m["loss"]) for m in metrics)
    loaded = load_run(run)
    fam = loaded.family
    assert fam.config.diffusion["backbone"] == "dit" and loaded.step == 4
    assert any(isinstance(m, DiT) for m in fam.diffusion.model.modules())
    request = GenerationRequest(run=str(run), prompt="item 1", seed=5, num=2, steps=3)
    first, second = generate(request, loaded=loaded), generate(request)  # the second reloads the run
    for a, b in zip(first, second):
        assert a.image.size == (16, 16) and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(first[0].image), np.asarray(first[1].image))
    path = save_images(first, tmp_path / "out")[1]
    record = read_record(path)
    assert record.family == "latent-diffusion" and record.seed == 6 and record.steps == 3
    assert "Family: latent-diffusion" in read_parameters(path)
    again = regenerate(record)
    assert np.array_equal(np.asarray(again.image), np.asarray(first[1].image))


def test_guidance_negative_prompt_and_sampler_change_the_result(runs):
    fam = load_run(runs[2]).family
    torch.manual_seed(0)
    for p in fam.diffusion.model.parameters():  # let the condition matter after 3 steps
        p.data.add_(torch.randn_like(p) * 0.05)
    base = dict(seeds=[3], prompts=["item 1"], steps=3)
    plain = fam.generate(BatchRequest(**base, cfg=1.0)).images
    guided = fam.generate(BatchRequest(**base, cfg=4.0)).images
    negative = fam.generate(BatchRequest(**base, cfg=4.0, negative="item 2")).images
    euler = fam.generate(BatchRequest(**base, cfg=4.0, sampler="euler")).images
    assert not torch.equal(plain, guided)
    assert not torch.equal(guided, negative)
    assert not torch.equal(guided, euler)


def test_progress_callback_sees_decoded_pixels(runs):
    fam = load_run(runs[2]).family
    seen = []
    fam.generate(BatchRequest(seeds=[0], prompts=["item 0"], steps=2), callback=seen.append)
    assert seen and seen[0]["denoised"].shape == (1, 3, 16, 16)
    assert seen[0]["z_denoised"].shape == (1, 4, 8, 8)


def test_run_folder_alone_is_enough(runs, tmp_path):
    """The VAE's weights travel in every checkpoint (vae.safetensors): the VAE run can go."""
    _, vae, ld = runs
    tensors = checkpoint_tensors(ld)
    vae_ema = checkpoint_tensors(vae)
    for key, value in tensors.items():
        if key.startswith("vae.autoencoder."):
            assert torch.equal(value, vae_ema["model_ema." + key.removeprefix("vae.autoencoder.")])
    assert "vae.scale" in tensors and not any(k.startswith("vae_ema.") for k in tensors)
    req = BatchRequest(seeds=[5], prompts=["item 0"], steps=2)
    expected = load_run(ld).family.generate(req).images
    moved = vae.with_name("vae-moved")
    vae.rename(moved)
    try:
        copy = tmp_path / "copy"
        shutil.copytree(ld, copy)
        assert torch.equal(load_run(copy).family.generate(req).images, expected)
    finally:
        moved.rename(vae)


def test_config_round_trip_rebuilds_same_modules(runs):
    fam = load_run(runs[2]).family
    again = LatentDiffusionFamily.from_config(fam.config_dict())
    for name, module in fam.modules().items():
        a, b = module.state_dict(), again.modules()[name].state_dict()
        assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert fam.ema_names() == ["model"]
    trainable = {id(p) for spec in fam.optimizers().values() for p in spec.params}
    assert not any(id(p) in trainable for p in fam.latent_space.parameters())


# ---------------------------------------------------------------------------------------------
# Resume and the latent cache
# ---------------------------------------------------------------------------------------------


def test_resume_equals_continuing_bitwise(runs, tmp_path):
    """6 steps straight vs 3 + resume to 6 (fresh family, empty cache), flips on, 6 images in
    batches of 4 so batches straddle epochs."""
    data, vae, _ = runs
    opts = dict(family_options={"vae": vae})
    straight = train_run(tmp_path, data, "straight", "latent-diffusion",
                         train={"steps": 6, "hflip": True}, **opts)
    resumed = train_run(tmp_path, data, "resumed", "latent-diffusion",
                        train={"steps": 3, "hflip": True}, **opts)
    train(TrainOptions(data=data, out=resumed, family="latent-diffusion", progress=False,
                       cache_dir=tmp_path / "cache", resume=True,
                       train={"steps": 6, "save_every": 3}))
    # each process logs its last step: a restart at step 0 with the same seed would reach the
    # same weights but not log step 3
    assert logged_steps(resumed) == sorted({*logged_steps(straight), 3})
    a, b = checkpoint_tensors(straight), checkpoint_tensors(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"


def test_latents_are_encoded_once_per_image(runs, monkeypatch):
    _, vae, _ = runs
    fam = LatentDiffusionFamily.create("tiny", INFO, "none", vae=vae)
    calls = []
    encode = VAEFamily.encode

    def counting(self, images, **kwargs):
        calls.append(len(images))
        return encode(self, images, **kwargs)

    monkeypatch.setattr(VAEFamily, "encode", counting)
    from limner.data.batch import Batch

    images = torch.rand(4, 3, 16, 16) * 2 - 1
    batch = Batch(images=images, indices=torch.arange(4))
    first = fam.encode_batch(batch)
    again = fam.encode_batch(Batch(images=images[[2, 0]], indices=torch.tensor([2, 0])))
    assert sum(calls) == 4 and fam.cache_size == 4
    assert torch.equal(again, first[[2, 0]])
    expected = fam.autoencoder.encode(images[1:2])  # alone, as the cache encodes
    assert torch.equal(first[1:2], expected)
    flipped = fam.encode_batch(Batch(images=images[:1].flip(-1), indices=torch.tensor([0])))
    assert fam.cache_size == 5 and not torch.equal(flipped, first[:1])


def test_scale_is_one_over_the_latent_std():
    space = LatentSpace(torch.nn.Linear(1, 1))
    assert not space.calibrated and float(space.current_scale()) == 1.0
    z = torch.randn(8, 4, 8, 8) * 3.0 + 0.5
    space.calibrate(z)
    assert space.calibrated
    assert abs(float((z * space.scale).std()) - 1.0) < 1e-5
    assert not any(p.requires_grad for p in space.parameters())


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


def test_missing_vae_is_refused():
    with pytest.raises(UsageError, match="--vae RUN_DIR"):
        LatentDiffusionFamily.create("tiny", INFO, "none")


def test_conditioned_vae_is_refused(runs, tmp_path):
    data = runs[0]
    cvae = train_run(tmp_path, data, "cvae", "vae", cond="text", train={"steps": 1, "save_every": 1})
    with pytest.raises(UsageError, match=r"--vae: .*conditional VAE.*--cond none"):
        LatentDiffusionFamily.create("tiny", INFO, "text", vae=cvae)


def test_unusable_vae_runs_are_refused(runs, tmp_path):
    _, vae, ld = runs
    with pytest.raises(UsageError, match="--vae: .*'latent-diffusion' run"):
        LatentDiffusionFamily.create("tiny", INFO, "none", vae=ld)
    with pytest.raises(UsageError, match="--vae: .*not a limner run folder"):
        LatentDiffusionFamily.create("tiny", INFO, "none", vae=tmp_path)
    with pytest.raises(UsageError, match="--resolution 32 differs"):
        LatentDiffusionFamily.create("tiny", DataInfo(resolution=32, channels=3), "none", vae=vae)
    with pytest.raises(UsageError, match="--preset"):
        LatentDiffusionFamily.create("huge", INFO, "none", vae=vae)


def test_cli_refuses_vae_for_other_families(runs, tmp_path):
    from limner.cli.main import main

    data, vae, _ = runs
    code = main(["train", str(data), "--out", str(tmp_path / "x"), "--family", "diffusion",
                 "--vae", str(vae), "--no-progress"])
    assert code == 2


def test_interpolation_starts_from_given_latent_noise(runs):
    from limner.generation.interpolate import interpolate

    _, _, ld = runs
    fam = load_run(ld).family
    assert fam.noise_shape == fam.latent_shape == (4, 8, 8)
    frames = interpolate(ld, (1, 2), 3, prompts=("item 0", "item 1"), steps=2)
    first = fam.generate(BatchRequest(seeds=[1], prompts=["item 0"], steps=2)).images[0]
    assert np.abs(np.asarray(frames[0], np.int16) - first.permute(1, 2, 0).numpy()).max() <= 1
