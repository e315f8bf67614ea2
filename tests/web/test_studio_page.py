"""End-to-end journeys through the studio page in Chromium against a real ``limner studio``
(see conftest.py): log in, generate with live previews, find by a word and by a paraphrase,
recall and regenerate the identical image, train with a live loss curve and timeline, two users
kept apart, user text never run as HTML, and a phone-width layout with no horizontal scroll."""

from __future__ import annotations

import io
import re
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from .conftest import DESKTOP, PHONE, RUN, login, screenshot

pytestmark = pytest.mark.xdist_group("studio_page")  # one studio, one browser (scripts/test.sh: --dist loadgroup)

XSS = '<img src=x onerror="window.__xss=1">'
JOB_TIMEOUT = 180  # generous: CI shares 2 cores between two test workers, a studio and a browser


def wait_job(studio, job_id: int, user: str = "alice") -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        job = studio.api("GET", f"/api/jobs/{job_id}", user=user)
        if job["state"] in ("done", "failed", "cancelled"):
            assert job["state"] == "done", f"job {job_id} {job['state']}: {job.get('error')}"
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish in {JOB_TIMEOUT} s")


def generate_in_page(page, prompt: str, seed: int, steps: int = 4) -> int:
    """Fill Generate and submit; returns the id of the first result card."""
    page.goto("/#/generate")
    form = page.locator("#page-generate")
    form.get_by_label("Model").select_option(RUN)
    form.get_by_label("Prompt", exact=True).fill(prompt)
    form.get_by_label("Seed", exact=True).fill(str(seed))
    form.get_by_label("Steps", exact=True).fill(str(steps))
    before = page.locator("li.result").count()
    form.get_by_role("button", name="Generate", exact=True).click()
    page.locator("li.result").nth(before).wait_for(timeout=JOB_TIMEOUT * 1000)
    return int(page.locator("li.result").first.get_attribute("data-image-id"))


@pytest.fixture(scope="module")
def heart(browser, studio):
    """alice generates "a red heart" in the page; what the preview area saw along the way."""
    context = browser.new_context(viewport=DESKTOP, base_url=studio.url)
    context.set_default_timeout(45_000)
    page = context.new_page()
    login(page, studio)
    page.goto("/#/generate")
    page.locator(".preview-card").wait_for()
    seen = []
    page.expose_function("notePreview", lambda n: seen.append(n))
    page.evaluate("""() => new MutationObserver(() => window.notePreview(
        document.querySelector('.preview-card').dataset.previews)).observe(
        document.querySelector('.preview-card'), {attributes: true, attributeFilter: ['data-previews']})""")
    image_id = generate_in_page(page, "a red heart", seed=7, steps=6)
    shot = screenshot(page, "studio-generate-desktop")
    context.close()
    return {"id": image_id, "previews": [int(n) for n in seen], "shot": shot}


@pytest.fixture(scope="module")
def face(studio, heart):
    """A second image of alice's (through the API) for the paraphrase search."""
    res = studio.api("POST", "/api/generate", {"model": RUN, "prompt": "a grinning face", "seed": 3, "steps": 4},
                     user="alice")
    job = wait_job(studio, (res.get("job") or res)["id"])
    return job["result"]["image_ids"][0]


def test_log_in_and_out(open_page, studio):
    page = open_page()
    page.goto("/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("alert").filter(has_text="Wrong username or password").wait_for()
    login(page, studio)
    page.goto("/#/account")
    page.get_by_text("Signed in as alice (admin).").wait_for()
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in").wait_for()
    page.goto("/#/gallery")
    page.get_by_role("button", name="Sign in").wait_for()  # the session is gone, not just hidden


def test_generate_shows_live_previews_then_the_image(heart, studio):
    assert heart["previews"], "no preview event reached the page"
    assert max(heart["previews"]) >= 2, f"previews seen: {heart['previews']}"
    image = studio.api("GET", f"/api/images/{heart['id']}", user="alice")
    assert image["prompt"] == "a red heart" and image["seed"] == 7


def results_in_gallery(page, query: str) -> list[str]:
    page.goto("/#/gallery")
    page.get_by_label("Search by words or meaning").fill(query)
    with page.expect_response(lambda r: "/api/images?" in r.url and "q=" in r.url) as res:
        page.get_by_role("button", name="Search", exact=True).click()
    assert res.value.ok, res.value.text()
    page.wait_for_function("() => !document.querySelector('#page-gallery .status.loading:not([hidden])')")
    return page.locator(".gallery-card .prompt").all_text_contents()


def test_find_the_image_by_a_word_and_by_a_paraphrase(open_page, studio, heart, face):
    page = open_page()
    login(page, studio)
    assert results_in_gallery(page, "heart")[0] == "a red heart"
    # No word in common with either prompt: only the meaning can rank them.
    assert results_in_gallery(page, "a happy smile")[0] == "a grinning face"
    assert results_in_gallery(page, "love symbol")[0] == "a red heart"


def pixels(page, image_id: int) -> np.ndarray:
    res = page.request.get(f"/api/images/{image_id}/file")
    assert res.ok, res.status
    return np.asarray(Image.open(io.BytesIO(res.body())).convert("RGB"))


def test_recall_asks_before_overwriting_and_regenerate_is_identical(open_page, studio, heart):
    page = open_page()
    login(page, studio)
    page.goto("/#/generate")
    page.get_by_label("Prompt", exact=True).fill("my unsaved idea")
    page.goto(f"/#/gallery?image={heart['id']}")
    detail = page.get_by_role("dialog")
    detail.get_by_text("a red heart").first.wait_for()
    detail.get_by_role("button", name="Recall into Generate").click()
    ask = page.get_by_role("dialog", name="Replace your unsaved prompt and settings?")
    ask.get_by_role("button", name="Keep mine").click()
    assert page.locator("#page-generate textarea[name=prompt]").input_value() == "my unsaved idea"
    gen = page.locator("#page-generate")
    detail.get_by_role("button", name="Recall into Generate").click()
    page.get_by_role("dialog", name="Replace your unsaved prompt and settings?").get_by_role("button", name="Replace").click()
    page.wait_for_url(re.compile(r"#/generate"))
    assert gen.get_by_label("Prompt", exact=True).input_value() == "a red heart"
    assert gen.get_by_label("Seed", exact=True).input_value() == "7"
    assert gen.get_by_label("Steps", exact=True).input_value() == "6"
    assert gen.get_by_label("Model").input_value() == RUN
    # Regenerate the identical image from its record (the gallery's detail panel).
    page.goto(f"/#/gallery?image={heart['id']}")
    page.get_by_role("dialog").get_by_role("button", name="Regenerate identical").click()
    link = page.get_by_role("dialog").locator("p.regenerated button")
    link.wait_for(timeout=JOB_TIMEOUT * 1000)
    again = int(link.text_content().split()[-1])
    np.testing.assert_array_equal(pixels(page, again), pixels(page, heart["id"]))
    if again == heart["id"]:  # the store keeps identical pixels once (by content hash)
        page.get_by_role("dialog").get_by_text("the pixels are identical to this image's").wait_for()
    else:
        assert studio.api("GET", f"/api/images/{again}", user="alice")["parent_id"] == heart["id"]
    # Recalling into Generate and generating again gives the same pixels too.
    page.get_by_role("dialog").get_by_role("button", name="Close").click()
    recalled = generate_in_page_after_recall(page, heart["id"])
    np.testing.assert_array_equal(pixels(page, recalled), pixels(page, heart["id"]))


def generate_in_page_after_recall(page, image_id: int) -> int:
    page.goto(f"/#/gallery?image={image_id}")
    page.get_by_role("dialog").get_by_role("button", name="Recall into Generate").click()
    page.wait_for_url(re.compile(r"#/generate"))
    before = page.locator("li.result").count()
    page.locator("#page-generate").get_by_role("button", name="Generate", exact=True).click()
    page.locator("li.result").nth(before).wait_for(timeout=JOB_TIMEOUT * 1000)
    return int(page.locator("li.result").first.get_attribute("data-image-id"))


def test_rate_filter_delete_and_undo(open_page, studio, heart, face):
    page = open_page()
    login(page, studio)
    page.goto("/#/gallery")
    card = page.locator(f".gallery-card[data-image-id='{face}']")
    with page.expect_response(lambda r: r.request.method == "PATCH"):
        card.get_by_role("button", name="Rate 4 stars").click()
    assert studio.api("GET", f"/api/images/{face}", user="alice")["rating"] == 4
    page.get_by_text("Filters", exact=True).click()
    page.get_by_label("Rating at least").select_option("4")
    page.wait_for_function("() => document.querySelectorAll('.gallery-card').length === 1")
    page.get_by_role("button", name="Clear filters").click()
    page.locator(f".gallery-card[data-image-id='{heart['id']}']").wait_for()
    card.locator(".thumb").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    card.wait_for(state="detached")
    ids = [i["id"] for i in studio.api("GET", "/api/images", user="alice")["items"]]
    assert face not in ids  # deleted for real, not only hidden
    page.get_by_role("button", name="Undo").click()
    card.wait_for()
    assert not studio.api("GET", f"/api/images/{face}", user="alice")["deleted"]


def test_user_text_is_never_run_as_html(open_page, studio, heart):
    page = open_page()
    login(page, studio)
    generate_in_page(page, XSS, seed=1, steps=2)
    page.goto("/#/gallery")
    page.get_by_label("New board").fill(XSS)
    page.get_by_role("button", name="Create", exact=True).click()
    page.locator(".boards .board button.link", has_text=XSS).wait_for()
    page.get_by_label("Search by words or meaning").fill("onerror")
    page.get_by_role("button", name="Search", exact=True).click()
    page.locator(".gallery-card .prompt", has_text=XSS).first.wait_for()
    page.locator(".gallery-card .thumb").first.click()
    page.get_by_role("dialog").locator("dd", has_text=XSS).first.wait_for()
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src='x']").count() == 0


def test_a_second_user_cannot_see_the_first_users_images(open_page, studio, heart):
    page = open_page()
    login(page, studio, "bob")
    page.goto("/#/gallery")
    page.get_by_text("No images yet").wait_for()
    assert page.locator(".gallery-card").count() == 0
    res = page.request.get(f"/api/images/{heart['id']}")
    assert res.status == 404
    res = page.request.get(f"/api/images/{heart['id']}/file")
    assert res.status == 404
    page.goto(f"/#/gallery?image={heart['id']}")
    page.get_by_role("dialog").get_by_role("alert").wait_for()  # an error state, not a blank panel
    page.goto("/#/generate")
    page.wait_for_function("() => !document.querySelector('#page-generate .status.loading:not([hidden])')")
    models = page.evaluate("[...document.querySelectorAll('#page-generate select[name=model] option')].map((o) => o.value)")
    assert RUN not in models


def dataset_zip(folder, out):
    """The tiny captioned dataset as a zip, plus two files the upload must skip and report."""
    with zipfile.ZipFile(out, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(folder).as_posix())
        z.writestr("images/broken.png", b"\x89PNG\r\n\x1a\n not really a png")
        z.writestr("notes.docx", b"PK not an image")
    return out


def test_a_shared_board_shows_new_images_to_its_members_live(open_page, studio, heart):
    board = studio.api("POST", "/api/boards", {"name": "team picks"}, user="alice")
    studio.api("POST", f"/api/boards/{board['id']}/members", {"username": "bob", "role": "viewer"}, user="alice")
    page = open_page()
    login(page, studio, "bob")
    page.goto("/#/gallery")
    page.get_by_role("button", name="team picks (shared with you: viewer)").click()
    page.get_by_text("No images match.").wait_for()
    page.get_by_text("live", exact=True).wait_for()  # the event socket is open
    studio.api("POST", f"/api/boards/{board['id']}/images", {"image_id": heart["id"]}, user="alice")
    page.locator(".gallery-card .prompt", has_text="a red heart").wait_for()  # no reload, no click
    page.get_by_text("New image on board “team picks”.").wait_for()


def test_train_a_tiny_run_with_a_live_loss_curve_and_timeline(open_page, studio, tmp_path):
    page = open_page()
    login(page, studio)
    page.goto("/#/train")
    train = page.locator("#page-train")
    train.get_by_text("Upload a dataset").click()
    train.get_by_label("New dataset name").fill("emoji-12")
    train.get_by_label(re.compile("^Zip of images")).set_input_files(str(dataset_zip(studio.data, tmp_path / "emoji.zip")))
    train.get_by_role("button", name="Upload and check").click()
    train.get_by_text("12 usable images in “emoji-12”; 2 files skipped.").wait_for()
    skipped = train.get_by_role("list", name="Skipped files").text_content()
    assert "images/broken.png" in skipped and "notes.docx" in skipped
    assert train.get_by_label("Dataset", exact=True).input_value() == "emoji-12"
    train.get_by_label("Family").select_option("diffusion")
    train.get_by_label("Preset").select_option("tiny")
    train.get_by_label("Steps", exact=True).fill("16")
    train.get_by_label("Run name").fill("web-run")
    train.get_by_text("Advanced").click()
    train.get_by_label("Resolution (px)").fill("16")
    train.get_by_label("Settings (one KEY=VALUE a line)").fill(
        "train.batch_size=4\ntrain.sample_every=8\ntrain.save_every=8\ntrain.log_every=1")
    train.get_by_role("button", name="Start training").click()
    chart = train.locator("svg.chart")
    page.wait_for_function("() => +document.querySelector('#page-train svg.chart')?.dataset.points >= 2",
                           timeout=JOB_TIMEOUT * 1000)
    first = int(chart.get_attribute("data-points"))
    page.wait_for_function(f"() => +document.querySelector('#page-train svg.chart').dataset.points > {first}",
                           timeout=JOB_TIMEOUT * 1000)
    train.locator(".frame-holder img").wait_for(timeout=JOB_TIMEOUT * 1000)
    assert train.locator("polyline.chart-raw").count() == 1
    train.get_by_text(re.compile(r"Job \S+: done")).wait_for(timeout=JOB_TIMEOUT * 1000)
    assert not train.get_by_role("button", name="Stop (saves first)").is_visible()
    train.get_by_text("step 16 (2 of 2)").wait_for()  # the final frame joins the timeline
    assert train.locator(".status.error").count() == 0, train.locator(".status.error").all_text_contents()
    screenshot(page, "studio-train-desktop")


def test_learn_shows_how_the_run_learns(open_page, studio):
    page = open_page()
    login(page, studio)
    page.goto(f"/#/learn?run={RUN}&view=timeline")
    learn = page.locator("#page-learn")
    view = learn.locator(".explain[data-view=timeline]")
    view.wait_for(timeout=JOB_TIMEOUT * 1000)
    assert view.locator("img.explain-img").count() >= 1
    view.get_by_text("The numbers").click()
    assert int(view.locator("svg.chart").first.get_attribute("data-points")) >= 1  # the loss curve
    learn.get_by_label("View").select_option("step")
    step = learn.locator(".explain[data-view=step]")
    step.wait_for(timeout=JOB_TIMEOUT * 1000)
    step.get_by_text("The numbers").click()
    assert step.locator("table tbody tr").count() > 3  # one row per layer: gradient and update norms
    screenshot(page, "studio-learn-step-desktop")
    # each view offers its own options: dynamics takes a prompt (text runs), features a token
    learn.get_by_label("View").select_option("dynamics")
    assert learn.get_by_label("Prompt").is_visible() and not learn.get_by_label("Token (raster index)").is_visible()
    learn.get_by_label("View").select_option("features")
    assert learn.get_by_label("Token (raster index)").is_visible() and not learn.get_by_label("Prompt").is_visible()


def test_the_keyboard_reaches_generate_with_a_visible_focus(open_page, studio):
    page = open_page()
    login(page, studio)
    page.goto("/#/generate")
    page.locator("#page-generate select[name=model] option").first.wait_for(state="attached")
    seen = []
    for _ in range(40):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("(document.activeElement.getAttribute('aria-label') || document.activeElement.textContent || document.activeElement.name || '').trim()"))
        if seen[-1] == "Generate" and page.evaluate("document.activeElement.type") == "submit":
            break
    else:
        raise AssertionError(f"Tab never reached the Generate button; it visited: {seen}")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    assert {"Prompt", "Random seed"} & set(seen) or "prompt" in seen


def test_an_api_key_is_shown_once_and_can_be_revoked(open_page, studio):
    page = open_page()
    login(page, studio)
    page.goto("/#/account")
    page.get_by_label("Key name").fill("laptop script")
    page.get_by_role("button", name="Create key").click()
    key = page.get_by_label("New API key").input_value()
    assert len(key) > 20
    anon = open_page().request  # another browser context: no session cookie, only the key
    assert anon.get("/api/me").status == 401
    me = anon.get("/api/me", headers={"Authorization": f"Bearer {key}"})
    assert me.ok and me.json()["username"] == "alice"
    page.reload()
    page.get_by_text(re.compile("^laptop script")).wait_for()
    assert key not in page.content()  # shown once: not after a reload
    page.get_by_role("button", name="Revoke key laptop script").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    page.get_by_text("No keys.").wait_for()
    assert anon.get("/api/me", headers={"Authorization": f"Bearer {key}"}).status == 401


def test_the_sketch_canvas_exports_the_drawing_and_a_black_and_white_mask(open_page, studio):
    """The drawing/mask component behind image-to-image and inpainting (shown only where the
    server's generate route takes a start image), driven with real pointer events."""
    page = open_page()
    login(page, studio)
    result = page.evaluate("""async () => {
        const { Sketch } = await import('/js/sketch.js');
        const sketch = new Sketch(64, { mask: true });
        document.querySelector('main').append(sketch.el);
        const stroke = (target, y) => {
            const r = target.getBoundingClientRect();
            const at = (x) => ({ clientX: r.left + x * r.width / 64, clientY: r.top + y * r.height / 64, pointerId: 1, bubbles: true });
            target.dispatchEvent(new PointerEvent('pointerdown', at(8)));
            target.dispatchEvent(new PointerEvent('pointermove', at(56)));
            target.dispatchEvent(new PointerEvent('pointerup', at(56)));
        };
        stroke(sketch.mask, 16);                       // Draw mode: paints the picture
        sketch.el.querySelector('button[aria-pressed=false]').click();  // Paint mask
        stroke(sketch.mask, 48);
        const pixels = async (blob) => {
            const bmp = await createImageBitmap(blob);
            const c = new OffscreenCanvas(bmp.width, bmp.height);
            const ctx = c.getContext('2d');
            ctx.drawImage(bmp, 0, 0);
            return (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data);
        };
        const img = await pixels(await sketch.imageBlob()), mask = await pixels(await sketch.maskBlob());
        return { hasImage: sketch.hasImage(), hasMask: sketch.hasMask(),
                 imgStroke: img(32, 16), imgBlank: img(32, 48), maskStroke: mask(32, 48), maskBlank: mask(32, 16) };
    }""")
    assert result["hasImage"] and result["hasMask"]
    assert result["imgStroke"][:3] == [0xd0, 0x30, 0x30] and result["imgBlank"][:3] == [255, 255, 255]
    assert result["maskStroke"][:3] == [255, 255, 255] and result["maskBlank"][:3] == [0, 0, 0]

    # On the generate page (the server's schema names init_image_id) a drawing becomes an upload
    # sent as the start image, and the server queues the job.
    page.goto("/#/generate")
    page.get_by_label("Model").select_option("tiny")
    page.get_by_text("Image to image and inpainting").wait_for()
    page.wait_for_load_state("networkidle")
    form = page.get_by_role("form", name="Generate")
    canvas = form.get_by_role("img", name="Drawing canvas with an inpainting mask layer")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + 10, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 10, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    form.get_by_label("Prompt", exact=True).fill("a sketched start image")
    with page.expect_response(lambda r: r.url.endswith("/api/generate")) as answer:
        form.get_by_role("button", name="Generate").click()
    body = answer.value.request.post_data_json
    assert answer.value.status == 202, answer.value.text()
    assert len(body["init_image_id"]) == 32 and body["strength"] == 0.6 and "mask_image_id" not in body
    job = wait_job(studio, answer.value.json()["job"]["id"])
    assert job["state"] == "done", job["error"]


PAGES = ["generate", "gallery", "train", "learn", "account"]


def test_every_page_at_phone_and_desktop_width(open_page, studio, heart):
    for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page = open_page(viewport)
        login(page, studio)
        for p in PAGES:
            page.goto(f"/#/{p}")
            page.locator(f"#page-{p}").wait_for()
            page.wait_for_load_state("networkidle")
            page.wait_for_function("() => !document.querySelector('main .status.loading:not([hidden])')")
            if name == "phone":
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= PHONE["width"], f"{p} scrolls sideways at 375 px ({width} px wide)"
                small = page.evaluate("""() => [...document.querySelectorAll('main button, main select, main input:not([type=hidden]):not([type=checkbox]), nav a')]
                    .filter((el) => el.offsetParent && el.getBoundingClientRect().height < 36)
                    .map((el) => el.outerHTML.slice(0, 80))""")
                assert not small, f"{p}: controls under 36 px tall at phone width: {small}"
            unlabelled = page.evaluate("""() => [...document.querySelectorAll('main input, main select, main textarea, main button')]
                .filter((el) => el.offsetParent && !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                        && !(el.tagName === 'BUTTON' && el.textContent.trim()))
                .map((el) => el.outerHTML.slice(0, 80))""")
            assert not unlabelled, f"{p}: controls without a label: {unlabelled}"
            screenshot(page, f"studio-{p}-{name}")


def test_the_gallery_loads_the_next_page_as_you_scroll(open_page, studio, heart):
    # Last in the file: it adds enough images for a second page (the page asks for 40 at a time).
    res = studio.api("POST", "/api/generate", {"model": RUN, "prompt": "a small blue square", "seed": 100,
                                               "num": 45, "steps": 1}, user="alice")
    wait_job(studio, (res.get("job") or res)["id"])
    total = len(studio.api("GET", "/api/images?limit=200", user="alice")["items"])
    assert total > 45
    page = open_page()
    login(page, studio)
    page.goto("/#/gallery")
    page.get_by_text("40 images so far.").wait_for()
    page.locator(".gallery-card").nth(39).scroll_into_view_if_needed()
    page.get_by_text(f"{total} images.").wait_for()
    ids = page.evaluate("[...document.querySelectorAll('.gallery-card')].map((c) => c.dataset.imageId)")
    assert len(ids) == len(set(ids)) == total  # the cursor neither repeats nor skips an image
