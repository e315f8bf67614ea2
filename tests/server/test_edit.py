"""Image-to-image and inpainting through the API: uploads as the start image and mask, the
library's guarantee (unmasked pixels are the start image's) holds for the stored PNG, the record
carries the input's sha256 and regenerating replays it bitwise (from the kept copy, after the
upload is gone); another user's upload id is a 404, a model without the capability a 422."""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from limner.client import StudioError
from tests.server.conftest import install_run, wait_job


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_inpainting_keeps_unmasked_pixels_records_the_input_and_regenerates_bitwise(accounts_studio):
    s, (alice, a), _ = accounts_studio
    rng = np.random.default_rng(0)
    init = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[:, 8:] = 255  # regenerate the right half
    init_up, mask_up = a.upload(png_bytes(init)), a.upload(png_bytes(mask))
    job = a.generate(model="tiny", prompt="red heart", steps=2, seed=5, init_image_id=init_up["id"],
                     mask_image_id=mask_up["id"], strength=0.8)
    done = wait_job(a, job["id"])
    assert done["state"] == "done", done["error"]
    image_id = done["result"]["image_ids"][0]
    pixels = np.asarray(Image.open(io.BytesIO(a.image_file(image_id))).convert("RGB"))
    assert np.array_equal(pixels[:, :8], init[:, :8])  # kept bitwise after the final composite
    assert not np.array_equal(pixels[:, 8:], init[:, 8:])
    record = a.image(image_id)["record"]
    kept = (s.home / "uploads" / f"u{alice.id}" / f"{init_up['id']}.png").read_bytes()
    assert record["init_image"]["sha256"] == hashlib.sha256(kept).hexdigest()
    assert record["mask"] is not None and record["strength"] == 0.8

    for up in (init_up, mask_up):  # the uploads go; the kept copies replay the edit
        (s.home / "uploads" / f"u{alice.id}" / f"{up['id']}.png").unlink()
    again = wait_job(a, a.regenerate(image_id)["id"])
    assert again["state"] == "done", again["error"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(a.image_file(again["result"]["image_ids"][0]))).convert("RGB")),
                          pixels)


def test_another_users_upload_is_404_and_a_model_without_the_capability_422(accounts_studio, tiny_run):
    s, (alice, a), (bob, b) = accounts_studio
    mine = b.upload(png_bytes(np.full((16, 16, 3), 200, np.uint8)))["id"]
    with pytest.raises(StudioError) as e:
        a.generate(model="tiny", prompt="x", steps=2, init_image_id=mine)
    assert e.value.status == 404 and e.value.field == "init_image_id"
    with pytest.raises(StudioError) as e:  # a mask needs a start image
        b.generate(model="tiny", prompt="x", steps=2, mask_image_id=mine)
    assert e.value.status == 422 and e.value.field == "mask_image_id"
    # a run whose family (a GAN) declares neither img2img nor inpaint: refused at submit
    gan = install_run(s.home, bob.id, tiny_run, name="gan")
    config = json.loads((gan / "config.json").read_text())
    config["family"]["name"] = "gan"
    (gan / "config.json").write_text(json.dumps(config))
    with pytest.raises(StudioError) as e:
        b.generate(model="gan", prompt="x", init_image_id=mine)
    assert e.value.status == 422 and e.value.field == "init_image_id"
    assert b.jobs() == []
    shutil.rmtree(gan)
