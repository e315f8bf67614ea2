"""Store fixtures: every storage test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``LIMNER_TEST_PG_URL`` (CI sets it; ``.ci/run``). Each test gets its own
schema on that server, created and dropped around it, so xdist workers never collide. Without
the variable the PostgreSQL half skips with the reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

PG_ENV = "LIMNER_TEST_PG_URL"
DIM = 384


def _pg_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@pytest.fixture(scope="session")
def _templates(tmp_path_factory: pytest.TempPathFactory):
    """Migrated once per test process: an SQLite file to copy, and (when configured) a
    PostgreSQL schema of this process's own, emptied between tests."""
    from limner.store import Store

    made: dict[str, object] = {"pg_home": tmp_path_factory.mktemp("pg-template")}
    sqlite_home = tmp_path_factory.mktemp("template")
    Store.open(None, home=sqlite_home).close()
    made["sqlite"] = sqlite_home / "gallery.db"
    yield made
    if "pg_admin" in made:
        with made["pg_admin"].begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {made['pg_schema']} CASCADE")
        made["pg_admin"].dispose()


def _pg_schema(made: dict[str, object], base: str) -> str:
    import sqlalchemy as sa

    from limner.store import Store

    if "pg_url" not in made:
        schema = f"t_{uuid.uuid4().hex[:16]}"
        admin = sa.create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1)
                                 if base.startswith("postgresql://") else base)
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        made.update(pg_admin=admin, pg_schema=schema)
        sep = "&" if "?" in base else "?"
        made["pg_url"] = f"{base}{sep}options=-csearch_path%3D{schema}"
        Store.open(made["pg_url"], home=made["pg_home"]).close()
    return made["pg_url"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, _templates, home: Path):
    """A database URL for a fresh, empty gallery (None = SQLite at <home>/gallery.db)."""
    if request.param == "sqlite":
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_templates["sqlite"], home / "gallery.db")
        return None
    base = _pg_url()
    if base is None:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    url = _pg_schema(_templates, base)
    with _templates["pg_admin"].begin() as conn:
        schema = _templates["pg_schema"]
        names = ", ".join(f"{schema}.{t}" for t in ("users", "sessions", "api_keys", "images", "boards",
                                                     "board_images", "board_members", "embeddings", "jobs"))
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    return url


def fake_embedder(texts: Sequence[str]) -> np.ndarray:
    """A deterministic stand-in for MiniLM: hashed bag of words, L2-normalised [N, 384].
    Texts sharing words are close; the real model is tested in test_semantic_minilm.py."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
            out[row, h % DIM] += 1.0
        n = np.linalg.norm(out[row])
        out[row] = out[row] / n if n else out[row]
    return out


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(db_url, home):
    from limner.store import Store

    s = Store.open(db_url, home=home, embedder=fake_embedder)
    yield s
    s.close()


def make_record(prompt: str | None = "a red heart", seed: int = 1, **over: Any) -> dict[str, Any]:
    """A generation record as limner.generation writes it (dict form)."""
    from dataclasses import asdict

    from limner.generation.request import GenerationRecord

    base = dict(prompt=prompt, negative=None, label=None, seed=seed, sampler="euler", steps=8, cfg=3.0,
                truncation=None, batch_seeds=[seed], index=0, family="diffusion", run_id="run-a",
                run_path="/runs/run-a", step=100, model_hash="abc123", width=16, height=16, device="cpu",
                dtype="float32", limner_version="0.1.0", torch_version="2.13.0", created="2026-12-04T00:00:00Z")
    base.update(over)
    return asdict(GenerationRecord.from_dict(base))


def write_png(path: Path, record: dict[str, Any], colour: int | None = None) -> Path:
    """A 16 px PNG with ``record`` embedded the way limner.generation.pngmeta writes it; pixel
    content follows the seed (or ``colour``) so distinct seeds give distinct images."""
    from PIL import Image

    from limner.generation.pngmeta import save_png
    from limner.generation.request import GenerationRecord

    rng = np.random.default_rng(colour if colour is not None else record["seed"])
    img = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    return save_png(img, GenerationRecord.from_dict(record), path)


@pytest.fixture
def add(store):
    """``add(user, prompt, seed, **record_fields)`` writes a PNG under the home and registers it."""

    def _add(user, prompt: str | None = "a red heart", seed: int = 1, colour: int | None = None,
             **over: Any) -> int:
        record = make_record(prompt, seed, **over)
        path = write_png(store.new_image_path(user, f"{seed}-{uuid.uuid4().hex[:6]}"), record, colour)
        return store.add_image(path, record, user)

    return _add
