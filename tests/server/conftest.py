"""Fixtures for the studio server tests: one tiny diffusion run per test session (trained
in-process on the bundled demo subset, 4 steps at 16 px), and studios on temporary homes driven
in-process through FastAPI's TestClient and ``limner.client``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the studio extra is not installed (pip install 'limner[studio]')")

from fastapi.testclient import TestClient  # noqa: E402

from limner.client import StudioClient  # noqa: E402

HOST = "testserver"


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A text-conditioned diffusion run (tiny preset, 16 px, 4 steps, one checkpoint, a grid)."""
    from limner.workflows import TrainOptions, train

    out = tmp_path_factory.mktemp("server-run") / "tiny"
    train(TrainOptions(data=tiny_data, out=out, preset="tiny", resolution=16, progress=False,
                       cache_dir=out.parent / "cache",
                       train=dict(steps=4, batch_size=4, save_every=4, sample_every=4, seed=3)))
    return out


def install_run(home: Path, user_id: int, run: Path, name: str = "tiny") -> Path:
    """Copy a run folder into a user's runs folder under the studio home."""
    dest = home / "runs" / f"u{user_id}" / name
    shutil.copytree(run, dest)
    return dest


class Studio:
    """A studio app on a temporary home with helpers to act as several users."""

    def __init__(self, home: Path, workers: int = 1, **settings) -> None:
        from limner.server.app import create_app
        from limner.server.settings import StudioSettings

        self.home = home
        self.settings = StudioSettings(home=home, allowed_hosts=(HOST,), workers=workers, **settings)
        self.app = create_app(self.settings, workers=workers > 0)
        self.store = self.app.state.studio.store
        self.http = TestClient(self.app, base_url=f"http://{HOST}")
        self.http.__enter__()

    def client(self, api_key: str | None = None) -> StudioClient:
        """A ``limner.client`` on its own cookie jar (a separate user agent)."""
        http = TestClient(self.app, base_url=f"http://{HOST}")
        return StudioClient(f"http://{HOST}", api_key=api_key, client=http)

    def add_user(self, name: str, role: str = "user", password: str = "correct horse battery") -> tuple:
        """Create an account and return (user, a client logged in with an API key)."""
        from limner.server import accounts

        user = self.store.create_user(name, password, role)
        accounts.forget(self.app.state.studio)
        _, key = self.store.create_api_key(user, "tests")
        return user, self.client(api_key=key)

    def close(self) -> None:
        self.http.__exit__(None, None, None)
        self.store.close()


@pytest.fixture
def studio_factory(tmp_path):
    made: list[Studio] = []

    def make(workers: int = 1, home: Path | None = None, **settings) -> Studio:
        studio = Studio(home or tmp_path / f"home{len(made)}", workers=workers, **settings)
        made.append(studio)
        return studio

    yield make
    for s in reversed(made):
        s.close()


@pytest.fixture
def accounts_studio(studio_factory, tiny_run):
    """A studio with accounts on: admin ``alice`` and user ``bob`` (each with an API-key client
    and a copy of the tiny run), as ``(studio, (alice, a), (bob, b))``."""
    s = studio_factory(workers=1)
    alice, a = s.add_user("alice", role="admin")
    bob, b = s.add_user("bob")
    install_run(s.home, alice.id, tiny_run)
    install_run(s.home, bob.id, tiny_run)
    return s, (alice, a), (bob, b)


PG_ENV = "LIMNER_TEST_PG_URL"


@pytest.fixture
def pg_url():
    """A PostgreSQL URL on a schema of this test's own (dropped afterwards), from
    ``LIMNER_TEST_PG_URL``; skips, saying so, without it."""
    import os
    import uuid

    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"this test needs PostgreSQL: set {PG_ENV} "
                    "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    import sqlalchemy as sa

    schema = f"srv_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


def receive_json(ws, timeout: float = 10.0) -> dict:
    """The next message of a TestClient WebSocket, or TimeoutError after ``timeout`` seconds
    (``ws.receive_json`` would wait for ever, hanging the test instead of failing it)."""
    import json

    import anyio

    async def receive():
        with anyio.fail_after(timeout):
            return await ws._send_rx.receive()

    message = ws.portal.call(receive)
    ws._raise_on_close(message)
    return json.loads(message["text"] if message.get("text") is not None else message["bytes"].decode())


def wait_job(client: StudioClient, job_id: str, timeout: float = 60) -> dict:
    return client.wait(job_id, timeout=timeout, poll=0.05)


def wait_until(predicate, timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")
