"""Request guards: Host (DNS rebinding), Origin (CSRF, including ``Origin: null``) on
state-changing requests and the WebSocket handshake, the body cap, file containment, and the
refusal to bind a non-loopback address without accounts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from starlette.websockets import WebSocketDisconnect

from limner.server.security import RateLimiter, allowed_host_names, split_host


@pytest.fixture
def studio(studio_factory):
    return studio_factory(workers=0, max_body=4096)


def test_foreign_host_is_refused_everywhere(studio):
    for method, path in (("GET", "/api/health"), ("GET", "/api/images"), ("POST", "/api/boards")):
        r = studio.http.request(method, path, headers={"Host": "evil.example"}, json={"name": "x"})
        assert r.status_code == 421, (method, path)
    assert studio.http.get("/api/health", headers={"Host": "testserver:8765"}).status_code == 200


@pytest.mark.parametrize("origin", ["null", "http://evil.example", "https://testserver.evil.example", "file://"])
def test_cross_origin_writes_are_refused(studio, origin):
    r = studio.http.post("/api/boards", json={"name": "x"}, headers={"Origin": origin})
    assert r.status_code == 403
    assert studio.store.list_boards(studio.store.ensure_local_user()) == []


def test_same_origin_and_originless_writes_pass(studio):
    assert studio.http.post("/api/boards", json={"name": "a"}, headers={"Origin": "http://testserver"}).status_code == 201
    assert studio.http.post("/api/boards", json={"name": "b"}).status_code == 201  # scripts send no Origin
    r = studio.http.post("/api/boards", json={"name": "c"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    # reads carry no risk of CSRF: a foreign Origin on GET is answered (CORS keeps the body from it)
    assert studio.http.get("/api/boards", headers={"Origin": "http://evil.example"}).status_code == 200


def test_websocket_from_another_origin_is_refused(studio):
    with pytest.raises(WebSocketDisconnect) as e:
        with studio.http.websocket_connect("/api/events", headers={"Origin": "http://evil.example"}) as ws:
            ws.receive_json()
    assert e.value.code == 1008


def test_body_cap(studio):
    r = studio.http.post("/api/boards", content=b"{" + b" " * 5000 + b"}", headers={"Content-Type": "application/json"})
    assert r.status_code == 413

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(10):
            yield b" " * 1000

    r = studio.http.post("/api/boards", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_security_headers(studio):
    r = studio.http.get("/api/health")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_run_and_dataset_names_stay_inside_their_folders(studio, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    runs = studio.home / "runs" / f"u{studio.store.ensure_local_user().id}"
    runs.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, runs / "link")
    assert studio.http.get("/api/runs/link").status_code == 422  # resolves outside: refused
    assert studio.http.get("/api/runs/..").status_code in (404, 422)
    assert studio.http.get("/api/runs/%2e%2e%2fx").status_code in (404, 422)
    assert [r["name"] for r in studio.http.get("/api/runs").json()] == []


def test_stored_file_paths_are_contained(studio, tmp_path):
    """A row whose path was tampered to point outside the home is never served."""
    import sqlalchemy as sa

    from limner.store.tables import images

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"x")
    user = studio.store.ensure_local_user()
    with studio.store._write() as conn:
        conn.execute(images.insert().values(owner_id=user.id, path="../secret.png", record="{}", created=0.0,
                                            content_hash="0" * 64, tags="[]"))
        image_id = conn.execute(sa.select(sa.func.max(images.c.id))).scalar_one()
    assert studio.http.get(f"/api/images/{image_id}/file").status_code in (400, 404)


def test_non_loopback_without_accounts_refuses_to_start(tmp_path):
    env = {**os.environ, "LIMNER_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "limner", "studio", "--host", "0.0.0.0", "--port", "1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "limner user add NAME --admin" in proc.stderr and "--host" in proc.stderr


def test_user_add_from_stdin(tmp_path):
    env = {**os.environ, "LIMNER_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "limner", "user", "add", "root", "--admin", "--password-stdin"],
                          input="correct horse battery\n", capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "created admin root" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "limner", "user", "add", "x", "--password-stdin"],
                          input="short\n", capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "--password" in proc.stderr


def test_host_helpers():
    assert split_host("[::1]:8765") == "::1" and split_host("Example.com:80") == "example.com"
    assert split_host("localhost") == "localhost"
    hosts = allowed_host_names("127.0.0.1", ["studio.lan"])
    assert {"127.0.0.1", "localhost", "::1", "studio.lan"} <= hosts and "0.0.0.0" not in hosts
    assert allowed_host_names("10.0.0.5") == frozenset({"10.0.0.5"})
    lim = RateLimiter(2, 10)
    lim.hit("a", now=0)
    lim.hit("a", now=1)
    assert lim.retry_after("a", now=2) == 8 and lim.retry_after("a", now=10.5) == 0
