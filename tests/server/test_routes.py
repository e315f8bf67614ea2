"""Every route through the HTTP API as a user would drive it (TestClient + limner.client, real
store, real worker, a real tiny run): generate with live events, search, file, rate, delete and
restore, regenerate, uploads, boards, runs, datasets, training, keys and users."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from limner.client import StudioError
from tests.server.conftest import install_run, wait_job


@pytest.fixture
def studio(studio_factory, tiny_run):
    s = studio_factory(workers=1)
    install_run(s.home, s.store.ensure_local_user().id, tiny_run)
    return s


def png_bytes(size: int = 16, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_generate_streams_events_and_stores_images(studio):
    c = studio.client()
    assert c.health()["ok"] is True
    assert c.me()["username"] == "local" and c.me()["implicit"] is True
    models = c.models()
    tiny = next(m for m in models if m["name"] == "tiny")
    assert tiny["kind"] == "run" and tiny["family"] == "diffusion" and "steps" in tiny["options"]
    with studio.http.websocket_connect("/api/events") as ws:
        job = c.generate(model="tiny", prompt="red heart", num=2, steps=3, seed=5)
        assert job["state"] == "queued" and job["request"]["seed"] == 5
        seen, images = [], []
        while True:
            msg = ws.receive_json()
            seen.append(msg["type"])
            if msg["type"] == "image":
                images.append(msg["image"])
            if msg["type"] == "preview":
                assert msg["image"].startswith("data:image/png;base64,")
            if msg["type"] == "job" and msg["job"]["state"] == "done":
                break
    assert {"job", "progress", "preview", "image"} <= set(seen)
    done = c.job(job["id"])
    assert done["state"] == "done" and done["progress"]["step"] == done["progress"]["total"] == 3
    ids = done["result"]["image_ids"]
    assert sorted(ids) == sorted(i["id"] for i in images) and len(ids) == 2
    detail = c.image(ids[0])
    assert detail["record"]["seed"] in (5, 6) and detail["record"]["steps"] == 3
    png = Image.open(io.BytesIO(c.image_file(ids[0])))
    assert png.size == (16, 16) and "limner" in png.text  # the record travels with the file
    assert Image.open(io.BytesIO(c.image_thumb(ids[0]))).format == "PNG"
    r = studio.http.get(f"/api/images/{ids[0]}/file?download=1")
    assert r.headers["content-disposition"].startswith("attachment")
    assert r.headers["x-content-type-options"] == "nosniff"


def test_search_rate_tag_delete_restore_and_versions(studio):
    c = studio.client()
    done = wait_job(c, c.generate(model="tiny", prompt="green apple", num=1, steps=2, seed=1)["id"])
    wait_job(c, c.generate(model="tiny", prompt="blue whale", num=1, steps=2, seed=2)["id"])
    image_id = done["result"]["image_ids"][0]
    hits = c.images(q="apple", mode="text")["items"]
    assert [h["id"] for h in hits] == [image_id]
    assert c.update_image(image_id, rating=4, tags=["fruit"])["rating"] == 4
    assert [h["id"] for h in c.images(rating_min=4)["items"]] == [image_id]
    page = c.images(limit=1)
    assert len(page["items"]) == 1 and page["next_cursor"]
    assert len(list(c.iter_images(limit=1))) == 2
    c.delete_image(image_id)
    with pytest.raises(StudioError) as e:
        c.image(image_id)
    assert e.value.status == 404
    assert c.restore_image(image_id)["id"] == image_id
    # regenerate with a new seed: a new image that is a version of the old one
    again = wait_job(c, c.request("POST", f"/api/images/{image_id}/regenerate", json_body={"seed": 99})["job"]["id"])
    new_id = again["result"]["image_ids"][0]
    assert c.image(new_id)["parent_id"] == image_id
    assert c.image(image_id)["versions"] == [image_id, new_id]
    # an exact replay makes identical pixels: the same image comes back
    replay = wait_job(c, c.regenerate(image_id)["id"])
    assert replay["state"] == "done" and replay["result"]["image_ids"] == [image_id]


def test_usage_errors_name_their_field(studio):
    c = studio.client()
    for body, field in (({"steps": 0}, "steps"), ({"sampler": "nope"}, "sampler"),
                        ({"options": {"temperature": 1.0}}, "temperature"), ({"num": 1000}, "num")):
        with pytest.raises(StudioError) as e:
            c.generate(model="tiny", prompt="x", **body)
        assert e.value.status == 422 and e.value.field == field, (body, e.value)
    with pytest.raises(StudioError) as e:
        c.generate(model="no-such-model")
    assert e.value.status == 404
    with pytest.raises(StudioError) as e:
        c.generate(model="../tiny")
    assert e.value.status == 422 and e.value.field == "model"


def test_uploads_are_decoded_and_reencoded(studio):
    c = studio.client()
    up = c.upload(png_bytes(20), "init.png")
    assert (up["width"], up["height"]) == (20, 20)
    r = studio.http.get(f"/api/uploads/{up['id']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"].startswith("attachment")
    for name, data in (("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
                       ("x.html", b"<html><script>alert(1)</script></html>"), ("empty.png", b"")):
        with pytest.raises(StudioError) as e:
            c.upload(data, name)
        assert e.value.status == 422 and e.value.field == "file"
    assert studio.http.get("/api/uploads/../../gallery.db").status_code == 404


def test_boards_and_sharing_routes(studio):
    c = studio.client()
    image_id = wait_job(c, c.generate(model="tiny", prompt="cat", steps=2, seed=3)["id"])["result"]["image_ids"][0]
    board = c.create_board("favourites")
    assert [b["name"] for b in c.boards()] == ["favourites"]
    c.add_to_board(board["id"], image_id)
    c.add_to_board(board["id"], image_id)  # idempotent
    assert [i["id"] for i in c.images(board=board["id"])["items"]] == [image_id]
    studio.store.create_user("bob", None)  # no password: accounts stay off for this studio
    assert c.share_board(board["id"], "bob", "viewer")["role"] == "viewer"
    assert c.board(board["id"])["members"][-1] == {"username": "bob", "role": "viewer"}
    c.remove_from_board(board["id"], image_id)
    assert c.images(board=board["id"])["items"] == []
    c.delete_board(board["id"])
    assert c.boards() == []


def test_runs_samples_metrics(studio):
    c = studio.client()
    runs = c.runs()
    assert [r["name"] for r in runs] == ["tiny"] and runs[0]["state"] == "ready" and runs[0]["step"] == 4
    run = c.run("tiny")
    assert run["checkpoints"] == [4] and run["config"]["family"]["name"] == "diffusion"
    assert len(c.run_metrics("tiny")) >= 1
    samples = c.run_samples("tiny")
    assert samples and Image.open(io.BytesIO(c.run_sample("tiny", samples[-1]["step"]))).format == "PNG"
    with pytest.raises(StudioError) as e:
        c.run("nope")
    assert e.value.status == 404


def test_dataset_upload_train_and_stop(studio, tiny_data):
    c = studio.client()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.write(tiny_data / "metadata.jsonl", "metadata.jsonl")
        for line in (tiny_data / "metadata.jsonl").read_text().splitlines():
            name = json.loads(line)["file_name"]
            z.write(tiny_data / name, name)
        z.writestr("images/bad.png", b"not a png")
        z.writestr("../escape.png", png_bytes())
    ds = c.upload_dataset(buf.getvalue(), "emoji")
    assert ds["images"] == 12 and {s["path"] for s in ds["skipped"]} == {"images/bad.png", "../escape.png"}
    assert [d["name"] for d in c.datasets()] == ["emoji"]
    with pytest.raises(StudioError) as e:
        c.train(data="emoji", name="r1", preset="tiny", resolution=16, steps=2, set={"train.nope": 1})
    assert e.value.status == 422
    job = c.train(data="emoji", name="r1", preset="tiny", resolution=16, steps=2, batch_size=4,
                  set={"train.save_every": 2, "train.sample_every": 0})
    done = wait_job(c, job["id"], timeout=120)
    assert done["state"] == "done", done
    assert done["result"] == {"run": "r1", "step": 2}
    assert "r1" in [m["name"] for m in c.models()]
    resumed = wait_job(c, c.resume("r1", 3)["id"], timeout=120)
    assert resumed["state"] == "done" and resumed["result"]["step"] == 3


def test_keys_and_users(studio):
    c = studio.client()
    created = c.create_key("laptop")
    assert created["key"].startswith("lmn_") and "key" not in c.keys()[0]
    c.delete_key(created["id"])
    c.delete_key(created["id"])  # idempotent
    assert c.keys()[0]["revoked"] is not None
    local_key = c.create_key("made without a login")["key"]
    assert studio.client(api_key=local_key).me()["username"] == "local"
    with pytest.raises(StudioError) as e:  # the first account must be able to administer
        c.create_user("carol", "correct horse battery", role="user")
    assert e.value.status == 422 and e.value.field == "role"
    assert c.create_user("carol", "correct horse battery", role="admin")["role"] == "admin"
    with pytest.raises(StudioError) as e:  # accounts are on now: the implicit local admin is gone
        c.users()
    assert e.value.status == 401
    with pytest.raises(StudioError) as e:  # and so are the keys it made without a login
        studio.client(api_key=local_key).me()
    assert e.value.status == 401
    c.login("carol", "correct horse battery")
    assert c.me()["username"] == "carol"
    assert c.create_user("dave", "correct horse battery")["role"] == "user"
    assert [u["username"] for u in c.users()] == ["local", "carol", "dave"]


def test_explain_view_of_own_run(studio):
    pytest.importorskip("limner.explain")
    c = studio.client()
    view = c.explain("tiny", "timeline")
    assert view["view"] == "timeline" and view["data"]["steps"] == [4]
    for url in [*view["images"].values(), *view["animations"].values()]:
        r = studio.http.get(url)
        assert r.status_code == 200 and r.headers["content-type"] in ("image/png", "image/gif")
    with pytest.raises(StudioError) as e:  # options naming server files are not taken over HTTP
        c.explain("tiny", "filmstrip", image="/etc/passwd")
    assert e.value.status == 422 and e.value.field == "image"
    with pytest.raises(StudioError) as e:
        c.explain("tiny", "no-such-view")
    assert e.value.field == "view"
