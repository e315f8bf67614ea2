"""The filmstrip replays a generated image's record: its last frame is that image, bitwise."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from limner.errors import UsageError
from limner.explain import compute_view
from limner.explain.base import ExplainRun
from limner.explain.filmstrip import replay

pytestmark = pytest.mark.xdist_group("explain")  # one worker builds the tiny runs once (--dist loadgroup)



@pytest.fixture(scope="module")
def generated(text_run, tmp_path_factory):
    from limner.generation.pipeline import generate, save_images
    from limner.generation.request import GenerationRequest

    out = tmp_path_factory.mktemp("generated")
    images = generate(GenerationRequest(run=str(text_run), prompt="red heart", seed=11, num=2, steps=6))
    return save_images(images, out)


def test_last_frame_is_the_generated_image_bitwise(text_run, generated, explain_cache):
    run = ExplainRun(text_run, cache_dir=explain_cache)
    record, frames, final, _ = replay(run, generated[1])  # the second image of its batch
    with Image.open(generated[1]) as im:
        png = np.asarray(im.convert("RGB"))
    assert np.array_equal(np.asarray(final.convert("RGB")), png)
    assert len(frames) == 6 and [f["i"] for f in frames] == list(range(6))
    sigmas = [f["sigma"] for f in frames]
    assert sigmas == sorted(sigmas, reverse=True)
    # the frames are this image's: the last predicted x0 is the image up to rounding
    last = ((frames[-1]["predicted x0"][0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    assert np.abs(last - png.astype(float)).mean() < 2.0
    result = compute_view(run, "filmstrip", image=str(generated[1]), max_frames=4)
    assert result.data["last_frame_equals_image"] is True and result.data["steps"] == 6
    assert len(result.animations["filmstrip"]) == 7


def test_filmstrip_needs_an_image(text_run, explain_cache):
    with pytest.raises(UsageError, match="image=PATH"):
        compute_view(text_run, "filmstrip", cache_dir=explain_cache)


def test_unmask_order_from_token_masks():
    import torch

    from limner.explain.filmstrip import unmask_order

    masked = [torch.tensor([[False, True], [True, True]]), torch.tensor([[False, True], [True, False]]),
              torch.tensor([[False, False], [False, False]])]
    order = unmask_order([{"mask": m} for m in masked])
    assert order.tolist() == [[0, 2], [2, 1]]
    assert unmask_order([{"i": 0}]) is None
