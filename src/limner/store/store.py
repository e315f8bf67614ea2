"""``Store``: the one object the studio, the workers and ``limner gallery`` use for persistent
state. It composes the per-resource parts (accounts, images, search, boards, jobs,
reconciliation); each part lives in its own module and all SQL stays inside ``limner.store``.

Every method that reads or changes user data takes the acting ``User`` first and enforces
ownership itself: callers cannot forget a check. Another user's object is reported as
``NotFound`` (not ``Forbidden``) so ids cannot be probed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import sqlalchemy as sa

from limner.store import db
from limner.store.accounts import AccountsPart
from limner.store.boards import BoardsPart
from limner.store.images import ImagesPart
from limner.store.jobs import JobsPart
from limner.store.reconcile import ReconcilePart, ReconcileReport
from limner.store.search import SearchPart
from limner.store.vectors import VectorCache

log = logging.getLogger(__name__)

# texts -> float32 [N, D] L2-normalised rows (see limner.conditioning.prompt_embed).
Embedder = Callable[[Sequence[str]], np.ndarray]


class Store(AccountsPart, ImagesPart, SearchPart, BoardsPart, JobsPart, ReconcilePart):
    """The gallery database plus the image files under the studio home.

    Args:
        engine: an engine from ``limner.store.db.create_engine`` (use ``Store.open``).
        home: the studio home folder (images, thumbnails and quarantine live under it).
        embedder: prompt embedder for semantic search; None leaves semantic search off
            (``SearchUnavailable``) and images without embeddings until ``backfill_embeddings``.
        embedder_name: recorded beside each vector, so a change of model is detectable.
    """

    def __init__(self, engine: sa.Engine, home: Path, embedder: Embedder | None = None,
                 embedder_name: str = "all-MiniLM-L6-v2"):
        self.engine = engine
        self.home = Path(home)
        self.embedder = embedder
        self.embedder_name = embedder_name
        self.vectors = VectorCache()

    @classmethod
    def open(cls, url: str | None = None, *, home: Path, embedder: Embedder | None = None,
             reconcile: bool = False, migrate: bool = True) -> "Store":
        """Open (creating and migrating as needed) the gallery database.

        Args:
            url: ``sqlite:///path`` or ``postgresql+psycopg://user@host/db``; None means
                SQLite at ``<home>/gallery.db``.
            home: the studio home folder (created if missing).
            embedder: see the class docstring.
            reconcile: also run ``reconcile()`` (register orphan files, flag missing ones).
            migrate: apply pending migrations (True; False only for tools that must not write).
        """
        home = Path(home)
        db.ensure_dir(home)
        if url is None:
            path = home / "gallery.db"
            db.check_sqlite_file(path)
            url = db.sqlite_url(path)
        engine = db.create_engine(url)
        try:
            if migrate:
                db.migrate(engine)
        except sa.exc.DatabaseError as e:
            engine.dispose()
            raise db.StoreError(f"{db.redact(url)}: cannot open the gallery database ({e.orig})") from e
        store = cls(engine, home, embedder)
        if reconcile:
            store.reconcile()
        return store

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def clock(self) -> float:
        """The database's time in epoch seconds (``db.now``): what the store stamps rows with,
        so processes on several machines compare times on one clock."""
        with self._read() as conn:
            return db.now(conn)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self):  # noqa: ANN202 - context manager
        return db.write_txn(self.engine)

    def _read(self):  # noqa: ANN202 - context manager
        return db.read_txn(self.engine)


__all__ = ["Store", "Embedder", "ReconcileReport"]
