"""The routes behind the studio page's newer controls: the run id of every model (and the gallery
filter by it), the family list the Train page builds its form from (presets, conditions, the
runs a family needs), training from a dataset folder on the studio's machine (admins only,
inside the configured roots, with ``limner data check``'s report first), the filmstrip of a
gallery image (only an image the user may see, only with the run that made it), RePaint's
``resample`` for inpainting, and run listings that go through ``limner.runs.run_summary``."""

from __future__ import annotations

import io
import json
import os
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


@pytest.fixture
def studio(studio_factory, tiny_run, tmp_path):
    """A studio without accounts (the local admin) with the tiny run and an extra data root."""
    roots = tmp_path / "datasets-outside-home"
    roots.mkdir()
    s = studio_factory(workers=1, data_roots=(roots,))
    install_run(s.home, s.store.ensure_local_user().id, tiny_run)
    s.extra_root = roots
    return s


def generate(client, model: str, **request) -> int:
    done = wait_job(client, client.generate(model=model, steps=2, **request)["id"])
    assert done["state"] == "done", done["error"]
    return done["result"]["image_ids"][0]


def other_run(s, user_id: int, tiny_run, name: str = "other", run_id: str = "0123456789ab"):
    """A copy of the tiny run under another name and run id (a different model)."""
    folder = install_run(s.home, user_id, tiny_run, name=name)
    config = json.loads((folder / "config.json").read_text())
    config["run_id"] = run_id
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# --------------------------------------------------------------------------- model ids, runs


def test_models_carry_the_run_id_their_images_carry_and_the_gallery_filters_by_it(studio, tiny_run):
    c = studio.client()
    other_run(studio, studio.store.ensure_local_user().id, tiny_run)
    models = {m["name"]: m for m in c.models()}
    tiny_id = json.loads((tiny_run / "config.json").read_text())["run_id"]
    assert models["tiny"]["run_id"] == tiny_id and models["other"]["run_id"] == "0123456789ab"
    for bundled in (m for m in models.values() if m["kind"] == "bundled"):
        assert bundled["run_id"]  # the bundled model too: its images carry it
    first = generate(c, "tiny", prompt="red heart", seed=1)
    second = generate(c, "other", prompt="red heart", seed=2)  # other pixels: not deduplicated
    assert c.image(first)["model"] == tiny_id
    assert [i["id"] for i in c.images(model=tiny_id)["items"]] == [first]
    assert [i["id"] for i in c.images(model="0123456789ab")["items"]] == [second]
    assert {r["name"]: r["run_id"] for r in c.runs()} == {"other": "0123456789ab", "tiny": tiny_id}


def test_a_run_with_an_unreadable_config_is_listed_as_unreadable_and_not_offered(studio, tiny_run):
    c = studio.client()
    broken = install_run(studio.home, studio.store.ensure_local_user().id, tiny_run, name="broken")
    (broken / "config.json").write_text("{not json")
    runs = {r["name"]: r for r in c.runs()}
    assert runs["broken"]["state"] == "unreadable" and "config.json" in runs["broken"]["error"]
    assert runs["tiny"]["state"] == "ready" and runs["tiny"]["family"] == "diffusion"
    assert "broken" not in [m["name"] for m in c.models()]
    r = studio.http.get("/api/runs/broken")
    assert r.status_code == 409 and r.json()["field"] == "name"
    assert str(studio.home) not in r.text  # no server path in the answer


# --------------------------------------------------------------------------- families, needs


def test_families_come_from_the_declarations(studio):
    from limner.models.diffusion.config import PRESETS
    from limner.models.registry import FAMILIES, declaration

    families = {f["name"]: f for f in studio.http.get("/api/families").json()}
    assert studio.client().families() == list(families.values())
    assert set(families) == set(FAMILIES)
    assert [p["name"] for p in families["diffusion"]["presets"]] == list(PRESETS)
    assert families["diffusion"]["default"] and families["diffusion"]["default_preset"] == "small"
    assert "vq-small" in [p["name"] for p in families["vae"]["presets"]]
    assert families["diffusion"]["conditions"] == ["none", "class", "text"]
    assert families["diffusion"]["needs"] == []
    need = families["latent-diffusion"]["needs"][0]
    assert (need["option"], need["family"], need["cond"]) == ("vae", "vae", "none")
    assert families["maskgit"]["needs"][0]["option"] == "vq"
    assert [o["name"] for o in families["maskgit"]["options"]] == [o.name for o in declaration("maskgit").options]
    assert "inpaint" in families["diffusion"]["capabilities"]
    from limner.models.registry import family_class

    for name, fam in families.items():  # every listed preset is one the family builds
        assert fam["presets"], name
        for preset in fam["presets"]:
            family_class(name).train_defaults(preset["name"])


def test_training_a_family_that_needs_a_run_checks_the_run(studio, tiny_data, tiny_run):
    c = studio.client()
    c.upload_dataset(_zip(tiny_data), "emoji")
    base = {"data": "emoji", "name": "ld", "family": "latent-diffusion", "preset": "tiny", "resolution": 16, "steps": 2}
    for needs, field, words in (({}, "needs.vae", "vae runs"),
                                ({"vae": "tiny"}, "needs.vae", "is a diffusion run"),
                                ({"vae": "nope"}, "needs.vae", "no readable run"),
                                ({"vae": "../tiny"}, "needs.vae", "letters"),
                                ({"vae": "tiny", "vq": "tiny"}, "needs.vq", "no 'vq' run")):
        r = studio.http.post("/api/train", json={**base, "needs": needs})
        assert r.status_code == 422 and r.json()["field"] == field and words in r.json()["detail"], (needs, r.json())
    with pytest.raises(StudioError) as err:
        c.train(**{k: v for k, v in base.items()}, needs={"vae": "tiny"})
    assert err.value.status == 422 and err.value.field == "needs.vae"
    r = studio.http.post("/api/train", json={**base, "family": "diffusion", "needs": {"vae": "tiny"}})
    assert r.status_code == 422 and r.json()["field"] == "needs.vae"
    assert c.jobs() == []


def _zip(folder) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


# --------------------------------------------------------------------------- folder datasets


def test_train_from_a_folder_inside_a_root_after_its_data_check(studio, tiny_data):
    c = studio.client()
    roots = c.dataset_roots()  # the Python client mirrors the routes the page uses
    assert roots == studio.http.get("/api/datasets/roots").json()
    assert roots == {"allowed": True, "roots": [str(studio.home / "datasets"), str(studio.extra_root)]}
    folder = studio.extra_root / "emoji"
    shutil.copytree(tiny_data, folder)
    (folder / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with open(folder / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "images/broken.png", "text": "broken"}) + "\n")
    body = c.check_dataset(str(folder))
    assert body["images"] == 12 and body["total"] == 13 and body["skipped_count"] == 1
    assert body["skipped"][0]["path"] == "images/broken.png" and body["has_captions"]
    job = c.train(data_path=str(folder), name="from-folder", preset="tiny", resolution=16, steps=2, batch_size=4,
                  set={"train.save_every": 2, "train.sample_every": 0})
    done = wait_job(c, job["id"], timeout=120)
    assert done["state"] == "done", done["error"]
    assert c.run("from-folder")["config"]["data"]["path"] == str(folder.resolve())


def test_folder_paths_stay_inside_the_roots(studio, tmp_path, tiny_data):
    outside = tmp_path / "outside"
    shutil.copytree(tiny_data, outside)
    os.symlink(outside, studio.extra_root / "link")
    cases = {"relative/path": "not an absolute path", str(outside): "outside the dataset folders",
             f"{studio.extra_root}/../outside": "'..'", f"{studio.extra_root}/link": "outside the dataset folders",
             f"{studio.extra_root}/missing": "no such folder", "/etc": "outside the dataset folders"}
    for path, words in cases.items():
        for route, body, field in (("/api/datasets/check", {"path": path}, "path"),
                                   ("/api/train", {"data_path": path, "name": "x"}, "data_path")):
            r = studio.http.post(route, json=body)
            assert r.status_code == 422 and r.json()["field"] == field and words in r.json()["detail"], (path, r.json())
    r = studio.http.post("/api/train", json={"data": "x", "data_path": str(studio.extra_root), "name": "x"})
    assert r.status_code == 422 and r.json()["field"] == "data"
    assert studio.client().jobs() == []


def test_only_an_admin_may_use_a_folder(studio_factory, tiny_data):
    s = studio_factory(workers=0)
    _, admin = s.add_user("alice", role="admin")
    _, user = s.add_user("bob")
    folder = s.home / "datasets" / "shared-folder"
    shutil.copytree(tiny_data, folder)
    assert user.request("GET", "/api/datasets/roots") == {"allowed": False, "roots": []}
    for route, body, field in (("/api/datasets/check", {"path": str(folder)}, "path"),
                               ("/api/train", {"data_path": str(folder), "name": "x"}, "data_path")):
        with pytest.raises(StudioError) as e:
            user.request("POST", route, json_body=body)
        assert e.value.status == 403 and e.value.field == field
    assert admin.request("POST", "/api/datasets/check", json_body={"path": str(folder)})["images"] == 12


def test_data_roots_setting(tmp_path, monkeypatch):
    from limner.errors import UsageError
    from limner.server.settings import StudioSettings

    monkeypatch.setenv("LIMNER_STUDIO_DATA_ROOTS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    settings = StudioSettings.from_env(home=tmp_path / "home")
    assert settings.dataset_roots() == [tmp_path / "home" / "datasets", tmp_path / "a", tmp_path / "b"]
    with pytest.raises(UsageError) as e:
        StudioSettings(home=tmp_path, data_roots=("relative",))
    assert e.value.field == "data_root"


# --------------------------------------------------------------------------- filmstrip of an image


def test_filmstrip_of_a_gallery_image(studio_factory, tiny_run):
    pytest.importorskip("limner.explain")
    s = studio_factory(workers=1)
    alice, a = s.add_user("alice", role="admin")
    bob, b = s.add_user("bob")
    install_run(s.home, alice.id, tiny_run)
    install_run(s.home, bob.id, tiny_run)  # the same model (same run id) in bob's runs
    other_run(s, alice.id, tiny_run)
    image_id = generate(a, "tiny", prompt="red heart", seed=4)
    view = a.request("GET", "/api/runs/tiny/explain/filmstrip", params={"image_id": image_id, "max_frames": 3})
    assert view["data"]["last_frame_equals_image"] is True and view["data"]["steps"] == 2
    assert view["options"]["image_id"] == image_id and str(s.home) not in json.dumps(view)
    assert set(view["images"]) == {"filmstrip"}
    # the run must be the one that made the image
    with pytest.raises(StudioError) as e:
        a.request("GET", "/api/runs/other/explain/filmstrip", params={"image_id": image_id})
    assert e.value.status == 422 and e.value.field == "image_id"
    # another user's image is not there for bob, until it is on a board shared with him
    with pytest.raises(StudioError) as e:
        b.request("GET", "/api/runs/tiny/explain/filmstrip", params={"image_id": image_id, "max_frames": 3})
    assert e.value.status == 404
    board = a.create_board("shared")
    a.add_to_board(board["id"], image_id)
    a.share_board(board["id"], "bob")
    shared = b.request("GET", "/api/runs/tiny/explain/filmstrip", params={"image_id": image_id, "max_frames": 3})
    assert shared["data"]["last_frame_equals_image"] is True
    for bad in ("abc", "0", "-1"):
        with pytest.raises(StudioError) as e:
            a.request("GET", "/api/runs/tiny/explain/filmstrip", params={"image_id": bad})
        assert e.value.status == 422 and e.value.field == "image_id"
    with pytest.raises(StudioError) as e:  # a view that takes no image takes no image_id
        a.request("GET", "/api/runs/tiny/explain/timeline", params={"image_id": image_id})
    assert e.value.status == 422 and e.value.field == "image_id"


# --------------------------------------------------------------------------- inpainting resample


def test_resample_goes_with_a_mask(studio):
    c = studio.client()
    init = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    init_id, mask_id = c.upload(png_bytes(init))["id"], c.upload(png_bytes(mask))["id"]
    for extra in ({}, {"init_image_id": init_id}):
        with pytest.raises(StudioError) as e:
            c.generate(model="tiny", prompt="x", resample=2, **extra)
        assert e.value.status == 422 and e.value.field == "resample"
    with pytest.raises(StudioError) as e:
        c.generate(model="tiny", prompt="x", resample=0, init_image_id=init_id, mask_image_id=mask_id)
    assert e.value.status == 422 and e.value.field == "resample"
    image_id = generate(c, "tiny", prompt="red heart", seed=2, init_image_id=init_id, mask_image_id=mask_id, resample=2)
    record = c.image(image_id)["record"]
    assert record["resample"] == 2 and record["mask"] is not None
    pixels = np.asarray(Image.open(io.BytesIO(c.image_file(image_id))).convert("RGB"))
    assert np.array_equal(pixels[:4], init[:4])  # outside the mask: the start image, bitwise
