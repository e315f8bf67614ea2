"""Accounts: every route but login and health refuses a request without a user (the route
table is walked, so a new route cannot forget it), sessions, API keys, login rate limit, and
two users who see only their own images, jobs, runs and boards unless a board is shared."""

from __future__ import annotations

import re

import pytest
from starlette.websockets import WebSocketDisconnect

from limner.client import StudioError
from tests.server.conftest import install_run, wait_job, wait_until

PUBLIC = {("GET", "/api/health"), ("POST", "/api/auth/login"), ("POST", "/api/auth/logout")}
DUMMY = {"image_id": "1", "board_id": "1", "key_id": "1", "job_id": "00000000-0000-0000-0000-000000000000",
         "name": "tiny", "step": "4", "upload_id": "0" * 32, "username": "bob", "view": "timeline",
         "key": "abc", "file": "x.png"}


def api_routes(app):
    """(methods, path) of every HTTP route and WebSocket under /api, included routers walked."""
    from fastapi.routing import APIRoute, APIWebSocketRoute

    def walk(routes):
        for r in routes:
            if hasattr(r, "original_router"):  # FastAPI's lazily included router
                yield from walk(r.original_router.routes)
            elif isinstance(r, (APIRoute, APIWebSocketRoute)):
                yield r

    return [(sorted(getattr(r, "methods", None) or {"WS"}), r.path) for r in walk(app.routes)]


def test_every_route_needs_a_user(accounts_studio):
    s, _, _ = accounts_studio
    routes = api_routes(s.app)
    assert len(routes) >= 40, routes  # the walk found the routers
    anonymous = s.client()
    checked = 0
    for methods, path in routes:
        url = re.sub(r"\{(\w+)\}", lambda m: DUMMY[m.group(1)], path)
        for method in methods:
            if (method, path) in PUBLIC or method == "HEAD":
                continue
            if method == "WS":
                with pytest.raises(WebSocketDisconnect) as e:
                    with s.http.websocket_connect(url) as ws:
                        ws.receive_json()
                assert e.value.code == 1008, path
            else:
                r = anonymous.http.request(method, url, json={})
                assert r.status_code == 401, f"{method} {path} answered {r.status_code} without a user"
            checked += 1
    assert checked >= 40
    # and a wrong key is no user either (no fallback to the implicit local admin)
    assert s.client(api_key="lmn_wrong").http.get("/api/me", headers={"Authorization": "Bearer lmn_wrong"}).status_code == 401


def test_login_session_cookie_and_logout(accounts_studio):
    s, _, _ = accounts_studio
    c = s.client()
    with pytest.raises(StudioError) as e:
        c.login("alice", "wrong password!")
    assert e.value.status == 401
    r = c.http.post("/api/auth/login", json={"username": "alice", "password": "correct horse battery"})
    cookie = r.headers["set-cookie"]
    assert "limner_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert c.me()["username"] == "alice"
    c.logout()
    with pytest.raises(StudioError) as e:
        c.me()
    assert e.value.status == 401


def test_login_is_rate_limited(studio_factory):
    s = studio_factory(workers=0, login_limit=3, login_window=60)
    s.add_user("alice")
    c = s.client()
    for _ in range(3):
        assert c.http.post("/api/auth/login", json={"username": "alice", "password": "nope nope"}).status_code == 401
    r = c.http.post("/api/auth/login", json={"username": "alice", "password": "correct horse battery"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_api_key_shown_once_and_revocable(accounts_studio):
    s, (alice, a), _ = accounts_studio
    made = a.create_key("script")
    k = s.client(api_key=made["key"])
    assert k.me()["username"] == "alice"
    assert all("key" not in row for row in a.keys())
    a.delete_key(made["id"])
    with pytest.raises(StudioError) as e:
        k.me()
    assert e.value.status == 401


def test_admin_only_routes(accounts_studio):
    s, _, (bob, b) = accounts_studio
    for call in (b.users, lambda: b.create_user("eve", "correct horse battery")):
        with pytest.raises(StudioError) as e:
            call()
        assert e.value.status == 403


def test_two_users_are_isolated(accounts_studio):
    s, (alice, a), (bob, b) = accounts_studio
    job = a.generate(model="tiny", prompt="secret plan", steps=2, seed=1)
    image_id = wait_job(a, job["id"])["result"]["image_ids"][0]
    board = a.create_board("private")
    a.add_to_board(board["id"], image_id)
    key = a.create_key("x")
    for call in (lambda: b.image(image_id), lambda: b.image_file(image_id), lambda: b.image_thumb(image_id),
                 lambda: b.update_image(image_id, rating=1), lambda: b.delete_image(image_id),
                 lambda: b.regenerate(image_id), lambda: b.job(job["id"]), lambda: b.cancel(job["id"]),
                 lambda: b.board(board["id"]), lambda: b.add_to_board(board["id"], image_id),
                 lambda: b.delete_board(board["id"]), lambda: b.delete_key(key["id"]),
                 lambda: b.images(board=board["id"])):
        with pytest.raises(StudioError) as e:
            call()
        assert e.value.status == 404, e.value  # not 403: ids cannot be probed
    assert b.images(q="secret")["items"] == [] and b.images()["items"] == []
    assert b.jobs() == [] and b.boards() == []
    # runs are per user: bob's "tiny" is his own copy; alice's new run is not his
    assert [r["name"] for r in b.runs()] == ["tiny"]
    # bob's events never carry alice's jobs
    with s.http.websocket_connect("/api/events", headers={"Authorization": f"Bearer {b.api_key}"}) as ws:
        wait_job(a, a.generate(model="tiny", prompt="more secrets", steps=2, seed=2)["id"])
        mine = wait_job(b, b.generate(model="tiny", prompt="bob's own", steps=2, seed=3)["id"])
        while True:
            msg = ws.receive_json()
            job_id = msg.get("job_id") or msg.get("job", {}).get("id")
            assert job_id == mine["id"], msg
            if msg["type"] == "job" and msg["job"]["state"] == "done":
                break


def test_shared_board_viewer_editor_and_live_events(accounts_studio):
    s, (alice, a), (bob, b) = accounts_studio
    image_id = wait_job(a, a.generate(model="tiny", prompt="sunset", steps=2, seed=4)["id"])["result"]["image_ids"][0]
    board = a.create_board("team")
    a.share_board(board["id"], "bob", "viewer")
    assert [x["id"] for x in b.boards()] == [board["id"]] and b.boards()[0]["role"] == "viewer"
    with s.http.websocket_connect("/api/events", headers={"Authorization": f"Bearer {b.api_key}"}) as ws:
        a.add_to_board(board["id"], image_id)
        msg = ws.receive_json()
        assert msg["type"] == "board_image" and msg["board_id"] == board["id"] and msg["image"]["id"] == image_id
    assert [i["id"] for i in b.images(board=board["id"])["items"]] == [image_id]
    assert b.image(image_id)["id"] == image_id  # visible through the board
    b_image = wait_job(b, b.generate(model="tiny", prompt="dawn", steps=2, seed=5)["id"])["result"]["image_ids"][0]
    with pytest.raises(StudioError) as e:  # a viewer cannot add
        b.add_to_board(board["id"], b_image)
    assert e.value.status in (403, 404)
    a.share_board(board["id"], "bob", "editor")
    b.add_to_board(board["id"], b_image)
    wait_until(lambda: len(a.images(board=board["id"])["items"]) == 2)
    with pytest.raises(StudioError):  # an editor cannot delete the board or rate alice's image
        b.delete_board(board["id"])
    with pytest.raises(StudioError):
        b.update_image(image_id, rating=5)


def test_turning_accounts_on_hands_the_local_gallery_to_the_first_admin(studio_factory, tiny_run):
    """What the implicit local admin made before accounts existed (images, boards, jobs) is the
    first admin's afterwards, instead of staying with an account nobody can log in to."""
    s = studio_factory(workers=1)
    local = s.store.ensure_local_user()
    install_run(s.home, local.id, tiny_run)
    c = s.client()  # no accounts yet: every request acts as "local"
    done = wait_job(c, c.generate(model="tiny", prompt="before accounts", steps=2, seed=1)["id"])
    image_id = done["result"]["image_ids"][0]
    board = c.create_board("early work")
    c.add_to_board(board["id"], image_id)
    created = c.create_user("alice", "correct horse battery", role="admin")  # turns accounts on
    with pytest.raises(StudioError) as e:
        c.images()
    assert e.value.status == 401
    alice = s.client()
    alice.login("alice", "correct horse battery")
    assert alice.image(image_id)["owner_id"] == created["id"]
    assert [i["id"] for i in alice.images(owner="alice")["items"]] == [image_id]
    assert alice.images(owner="local")["items"] == []
    assert [(b["id"], b["role"]) for b in alice.boards()] == [(board["id"], "owner")]
    assert [i["id"] for i in alice.images(board=board["id"])["items"]] == [image_id]
    assert [j["id"] for j in alice.jobs()] == [done["id"]]
    # the run folder moved with them: alice lists it and generates from it
    assert "tiny" in [m["name"] for m in alice.models() if m["kind"] == "run"]
    assert (s.home / "runs" / f"u{created['id']}" / "tiny" / "config.json").is_file()
    again = wait_job(alice, alice.generate(model="tiny", prompt="after accounts", steps=2, seed=1)["id"])
    assert again["state"] == "done"
    # the old folder is a link to the new one, so absolute paths recorded under it still resolve
    old = s.home / "runs" / f"u{local.id}"
    assert old.is_symlink() and (old / "tiny" / "config.json").is_file()
    # the second admin adopts nothing
    bob = alice.create_user("bob", "correct horse battery", role="admin")
    b = s.client()
    b.login("bob", "correct horse battery")
    assert b.jobs() == [] and b.images(owner="bob")["items"] == [] and bob["id"] != created["id"]


def test_hand_over_moves_each_kind_and_keeps_what_the_new_owner_has(tmp_path):
    """The folders move kind by kind; a name the new owner already has is kept on both sides
    (nothing is overwritten), and only a fully moved folder becomes a link."""
    from limner.server.runs import hand_over

    for kind, names in {"runs": ["a", "b"], "datasets": ["faces"], "evals": []}.items():
        for name in names:
            (tmp_path / kind / "u1" / name).mkdir(parents=True)
            (tmp_path / kind / "u1" / name / "mine.txt").write_text(f"local {kind} {name}")
    (tmp_path / "evals" / "u1").mkdir(parents=True)  # empty: stays as it is
    (tmp_path / "runs" / "u2" / "b").mkdir(parents=True)
    (tmp_path / "runs" / "u2" / "b" / "mine.txt").write_text("admin's own b")

    assert hand_over(tmp_path, 1, 2) == ["runs", "datasets"]
    assert (tmp_path / "runs" / "u2" / "a" / "mine.txt").read_text() == "local runs a"
    assert (tmp_path / "runs" / "u2" / "b" / "mine.txt").read_text() == "admin's own b"
    assert (tmp_path / "runs" / "u1" / "b" / "mine.txt").read_text() == "local runs b"  # not lost
    assert not (tmp_path / "runs" / "u1").is_symlink()
    assert (tmp_path / "datasets" / "u1").is_symlink()
    assert (tmp_path / "datasets" / "u1" / "faces" / "mine.txt").read_text() == "local datasets faces"
    assert (tmp_path / "datasets" / "u2" / "faces").is_dir() and not (tmp_path / "datasets" / "u2").is_symlink()
    assert not (tmp_path / "evals" / "u1").is_symlink()
    assert hand_over(tmp_path, 1, 2) == ["runs"]  # again: the links are skipped, the clash stays


def test_a_hand_over_cut_short_is_finished_at_the_next_start(tmp_path, tiny_run):
    """The first admin was created (the database committed) but the process stopped before the
    local user's folders moved: the next studio start moves them."""
    from limner.server.app import open_studio
    from limner.server.settings import StudioSettings

    settings = StudioSettings.from_env(home=tmp_path / "home", db_url=None)
    studio = open_studio(settings)
    local = studio.store.ensure_local_user()
    install_run(settings.home, local.id, tiny_run)
    admin, adopted = studio.store.create_user_adopting("alice", "correct horse battery", "admin")  # no move
    assert adopted is not None and (settings.home / "runs" / f"u{local.id}" / "tiny").is_dir()
    assert not (settings.home / "runs" / f"u{admin.id}").exists()
    again = open_studio(settings)
    assert (settings.home / "runs" / f"u{admin.id}" / "tiny" / "config.json").is_file()
    assert (settings.home / "runs" / f"u{local.id}").is_symlink()
    from limner.server.accounts import finish_hand_over

    assert finish_hand_over(again) == []  # nothing left to move
