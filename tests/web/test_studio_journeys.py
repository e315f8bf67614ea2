"""More journeys through the studio page in Chromium (see conftest.py): the gallery filtered by
the model that made an image, inpainting with the mask brush and RePaint passes, "how was this
made" (the filmstrip of a gallery image, from its detail panel and on the Learn page), and
training from a folder on the studio's machine after its data check, with a family built on
another run picked from the family list."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from .conftest import RUN, login, screenshot
from .test_studio_page import JOB_TIMEOUT, wait_job

pytestmark = pytest.mark.xdist_group("studio_page")  # one studio, one browser (as test_studio_page.py)

COPY_ID = "0123456789ab"


def alice_id(studio) -> int:
    return studio.api("GET", "/api/me", user="alice")["id"]


def generate(studio, model: str, prompt: str, seed: int, steps: int = 2) -> int:
    res = studio.api("POST", "/api/generate", {"model": model, "prompt": prompt, "seed": seed, "steps": steps},
                     user="alice")
    return wait_job(studio, res["job"]["id"])["result"]["image_ids"][0]


@pytest.fixture(scope="module")
def copy_run(studio):
    """A second model of alice's: the tiny run copied under another name and run id."""
    runs = studio.home / "runs" / f"u{alice_id(studio)}"
    folder = runs / "tiny-copy"
    if not folder.exists():
        shutil.copytree(runs / RUN, folder)
        config = json.loads((folder / "config.json").read_text())
        config["run_id"] = COPY_ID
        (folder / "config.json").write_text(json.dumps(config))
    return "tiny-copy"


def draw(page, canvas, y_share: float):
    box = canvas.bounding_box()
    y = box["y"] + box["height"] * y_share
    page.mouse.move(box["x"] + 8, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 8, y, steps=5)
    page.mouse.up()


def test_the_gallery_filters_by_the_model_that_made_an_image(open_page, studio, copy_run):
    chair = generate(studio, RUN, "a wooden chair", seed=11)
    bicycle = generate(studio, copy_run, "a blue bicycle", seed=12)
    tiny_id = studio.api("GET", f"/api/images/{chair}", user="alice")["model"]
    page = open_page()
    login(page, studio)
    page.goto("/#/generate")
    page.get_by_label("Model").select_option(copy_run)
    page.get_by_text(f"Model id {COPY_ID}").wait_for()  # the id the gallery filters by
    page.goto("/#/gallery")
    page.locator(f".gallery-card[data-image-id='{chair}']").wait_for()
    page.get_by_text("Filters", exact=True).click()
    models = page.locator("#page-gallery select[name=model] option")
    assert {models.nth(i).get_attribute("value") for i in range(models.count())} >= {"", tiny_id, COPY_ID}
    gallery = page.locator("#page-gallery")
    gallery.get_by_label("Model", exact=True).select_option(COPY_ID)
    page.wait_for_function(f"""() => [...document.querySelectorAll('.gallery-card')].map((c) => c.dataset.imageId)
        .join() === '{bicycle}'""")
    gallery.get_by_label("Model", exact=True).select_option(tiny_id)
    page.locator(f".gallery-card[data-image-id='{chair}']").wait_for()
    assert page.locator(f".gallery-card[data-image-id='{bicycle}']").count() == 0
    page.get_by_role("button", name="Clear filters").click()
    page.locator(f".gallery-card[data-image-id='{bicycle}']").click()
    page.get_by_role("dialog").locator("dd", has_text=f"{copy_run} (id {COPY_ID})").wait_for()


def test_inpaint_with_the_mask_brush(open_page, studio):
    page = open_page()
    login(page, studio)
    page.goto("/#/generate")
    form = page.get_by_role("form", name="Generate")
    form.get_by_label("Model").select_option(RUN)
    page.get_by_text("Image to image and inpainting").wait_for()
    page.wait_for_load_state("networkidle")
    canvas = form.get_by_role("img", name="Drawing canvas with an inpainting mask layer")
    canvas.scroll_into_view_if_needed()
    draw(page, canvas, 0.25)  # the start image: a red line
    form.get_by_role("button", name="Paint mask").click()
    assert form.get_by_role("button", name="Paint mask").get_attribute("aria-pressed") == "true"
    draw(page, canvas, 0.75)  # the part to regenerate
    tint = page.evaluate("""() => { const c = document.querySelector('#page-generate canvas.mask');
        const d = c.getContext('2d').getImageData(c.width / 2, Math.round(c.height * 0.75), 1, 1).data;
        return Array.from(d); }""")
    assert tint[3] > 0 and tint[:3] != [255, 255, 255], tint  # the mask shows on a white picture
    form.get_by_label("Repaint passes").fill("2")
    form.get_by_label("Prompt", exact=True).fill("a mended picture")
    form.get_by_label("Steps", exact=True).fill("2")
    with page.expect_response(lambda r: r.url.endswith("/api/generate")) as answer:
        form.get_by_role("button", name="Generate").click()
    assert answer.value.status == 202, answer.value.text()
    body = answer.value.request.post_data_json
    assert len(body["init_image_id"]) == 32 and len(body["mask_image_id"]) == 32 and body["resample"] == 2
    assert "strength" not in body  # untouched with a mask: the library's default (the whole schedule)
    job = wait_job(studio, answer.value.json()["job"]["id"])
    record = studio.api("GET", f"/api/images/{job['result']['image_ids'][0]}", user="alice")["record"]
    assert record["resample"] == 2 and record["mask"] is not None and record["strength"] == 1.0
    page.locator(f"li.result[data-image-id='{job['result']['image_ids'][0]}']").wait_for(timeout=JOB_TIMEOUT * 1000)


def test_how_an_image_was_made_from_the_gallery_and_on_learn(open_page, studio):
    boat = generate(studio, RUN, "a paper boat", seed=21, steps=3)
    page = open_page()
    login(page, studio)
    page.goto(f"/#/gallery?image={boat}")
    page.get_by_role("dialog").get_by_role("button", name="How was this made").click()
    page.wait_for_url(re.compile(r"#/learn"))
    learn = page.locator("#page-learn")
    view = learn.locator(".explain[data-view=filmstrip]")
    view.wait_for(timeout=JOB_TIMEOUT * 1000)
    view.get_by_text(f"The last frame is image {boat} itself").wait_for()
    assert view.locator("img.explain-img").count() >= 1
    assert learn.get_by_label("View").input_value() == "filmstrip"
    assert learn.get_by_label("Image", exact=True).input_value() == str(boat)
    screenshot(page, "studio-learn-filmstrip-desktop")
    # On the Learn page itself: the image picker lists the images the selected model made.
    other = generate(studio, RUN, "a tin drum", seed=22, steps=3)
    page.goto(f"/#/learn?run={RUN}&view=timeline")
    learn.locator(".explain[data-view=timeline]").wait_for(timeout=JOB_TIMEOUT * 1000)
    learn.get_by_label("View").select_option("filmstrip")
    # the list loads after the view changes: wait for the new image, then read the whole list
    learn.locator(f"select[name=image_id] option[value='{other}']").wait_for(state="attached")
    values = learn.locator("select[name=image_id]").evaluate("s => [...s.options].map(o => o.value)")
    assert values[0] == str(other) and str(boat) in values and len(set(values)) == len(values), values
    learn.get_by_label("Image", exact=True).select_option(str(other))
    learn.locator(".explain[data-view=filmstrip]").get_by_text(f"The last frame is image {other} itself").wait_for(
        timeout=JOB_TIMEOUT * 1000)


def test_train_from_a_folder_with_a_family_built_on_another_run(open_page, studio):
    folder = studio.data_root / "emoji-folder"
    if not folder.exists():
        shutil.copytree(studio.data, folder)
        (folder / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        with open(folder / "metadata.jsonl", "a") as f:
            f.write(json.dumps({"file_name": "images/broken.png", "text": "a broken file"}) + "\n")
    page = open_page()
    login(page, studio)
    page.goto("/#/train")
    train = page.locator("#page-train")
    train.get_by_label("Data from").select_option("folder")
    path = train.get_by_label("Dataset folder")
    path.fill("/etc")
    train.get_by_role("button", name="Check folder").click()
    train.get_by_role("alert").filter(has_text="outside the dataset folders").wait_for()
    path.fill(str(folder))
    train.get_by_role("button", name="Check folder").click()
    train.get_by_text(re.compile(r"^12 usable images in .*emoji-folder; 1 file skipped")).wait_for()
    assert "images/broken.png" in train.get_by_role("list", name="Skipped files").text_content()

    # latent diffusion is built on a VAE run: none yet, so the page offers to set one up
    train.get_by_label("Family").select_option("latent-diffusion")
    need = train.get_by_label("VAE run")
    assert need.input_value() == ""
    train.get_by_role("button", name=re.compile("^Set up a vae run trained with condition none")).click()
    assert train.get_by_label("Family").input_value() == "vae"
    assert train.get_by_label("Condition").input_value() == "none"
    train.locator("select[name=preset] option[value='vq-tiny']").wait_for(state="attached")  # the VAE's presets
    train.get_by_label("Preset").select_option("tiny")
    train.get_by_label("Steps", exact=True).fill("4")
    train.get_by_label("Run name").fill("vae-web")
    train.get_by_text("Advanced").click()
    train.get_by_label("Resolution (px)").fill("16")
    train.get_by_label("Settings (one KEY=VALUE a line)").fill("train.batch_size=4\ntrain.sample_every=0\ntrain.save_every=4")
    with page.expect_response(lambda r: r.url.endswith("/api/train")) as answer:
        train.get_by_role("button", name="Start training").click()
    assert answer.value.status == 202, answer.value.text()
    body = answer.value.request.post_data_json
    assert body["data_path"] == str(folder) and body["family"] == "vae" and body["cond"] == "none" and "data" not in body
    wait_job(studio, answer.value.json()["job"]["id"])

    train.get_by_label("Family").select_option("latent-diffusion")
    page.wait_for_function("""() => [...document.querySelectorAll('#page-train select[name="needs.vae"] option')]
        .some((o) => o.value === 'vae-web')""", timeout=JOB_TIMEOUT * 1000)
    assert train.get_by_label("VAE run").input_value() == "vae-web"
    train.get_by_label("Preset").select_option("tiny")
    train.get_by_label("Condition").select_option("")
    train.get_by_label("Steps", exact=True).fill("2")
    train.get_by_label("Run name").fill("latent-web")
    train.get_by_label("Settings (one KEY=VALUE a line)").fill("train.batch_size=4\ntrain.sample_every=0\ntrain.save_every=2")
    with page.expect_response(lambda r: r.url.endswith("/api/train")) as answer:
        train.get_by_role("button", name="Start training").click()
    assert answer.value.status == 202, answer.value.text()
    assert answer.value.request.post_data_json["needs"] == {"vae": "vae-web"}
    wait_job(studio, answer.value.json()["job"]["id"])
    config = studio.api("GET", "/api/runs/latent-web", user="alice")["config"]
    assert config["family"]["name"] == "latent-diffusion"
    assert config["family"]["config"]["vae_run"]["path"].endswith("vae-web")
    screenshot(page, "studio-train-folder-desktop")


def test_the_new_controls_fit_a_phone(open_page, studio, copy_run):
    """The controls these journeys use, opened up at 375 px: no sideways scrolling, touch-sized
    and labelled (the inpainting fieldset, a family's needed-run picker and the folder box, the
    Learn page's filmstrip picker, the gallery's Model filter)."""
    from .conftest import PHONE

    generate(studio, RUN, "a glass marble", seed=31)  # an image for the filmstrip picker
    page = open_page(PHONE)
    login(page, studio)

    def check(where: str):
        page.wait_for_function("() => !document.querySelector('main .status.loading:not([hidden])')",
                               timeout=JOB_TIMEOUT * 1000)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{where} scrolls sideways at 375 px ({width} px wide)"
        bad = page.evaluate("""() => [...document.querySelectorAll('main button, main select, main input:not([type=hidden]):not([type=checkbox])')]
            .filter((el) => el.offsetParent && (el.getBoundingClientRect().height < 36
                || !((el.labels && el.labels.length) || el.getAttribute('aria-label') || (el.tagName === 'BUTTON' && el.textContent.trim()))))
            .map((el) => el.outerHTML.slice(0, 80))""")
        assert not bad, f"{where}: small or unlabelled controls at phone width: {bad}"
        screenshot(page, f"studio-{where}-phone")

    page.goto("/#/generate")
    page.locator("#page-generate").get_by_label("Model").select_option(RUN)
    page.get_by_text("Image to image and inpainting").wait_for()
    page.locator("#page-generate").get_by_label("Repaint passes").wait_for()
    check("generate-inpaint")
    page.goto("/#/train")
    train = page.locator("#page-train")
    train.get_by_label("Data from").select_option("folder")
    train.get_by_label("Family").select_option("maskgit")
    train.get_by_label("VQ run").wait_for()
    check("train-folder")
    page.goto("/#/gallery")
    page.get_by_text("Filters", exact=True).click()
    page.locator("#page-gallery").get_by_label("Model", exact=True).wait_for()
    check("gallery-filters")
    page.goto(f"/#/learn?run={RUN}&view=filmstrip")
    page.locator("#page-learn .explain[data-view=filmstrip]").wait_for(timeout=JOB_TIMEOUT * 1000)
    check("learn-filmstrip")
