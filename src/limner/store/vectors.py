"""In-memory copy of the prompt embeddings for exact semantic search.

Exact search is one matrix-vector product over every stored vector: at 100,000 images x 384
float32 that is ~150 MB held once per process and a few milliseconds per query on one core
(figures in ``benchmarks/search_latency.py``), so an approximate index does not pay at this
scale. The cache follows the table incrementally (see ``VectorCache.refresh``).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import sqlalchemy as sa

from limner.store.tables import embeddings


FULL_CHECK_S = 30.0


class VectorCache:
    """ids [N] int64 (ascending) and unit vectors [N, D] float32, shared by searches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ids = np.zeros(0, dtype=np.int64)
        self.matrix = np.zeros((0, 0), dtype=np.float32)
        self._checked = float("-inf")

    def refresh(self, conn: sa.Connection) -> tuple[np.ndarray, np.ndarray]:
        """Bring the cache up to date with the table; returns (ids, matrix).

        Each call costs one index lookup (the largest id) and loads rows above the cached ones.
        Every ``FULL_CHECK_S`` seconds the row count is compared too (a count scans an index,
        too slow for every query at 100k rows), catching rows committed out of id order and
        purged ones; until then a purged image's vector only costs a wasted candidate, since
        every candidate is checked against the images table anyway.
        """
        top = conn.execute(sa.select(sa.func.max(embeddings.c.image_id))).scalar()
        with self._lock:
            have_top = int(self.ids[-1]) if len(self.ids) else None
            if top is not None and (have_top is None or int(top) > have_top):
                self._append(conn)
            if time.monotonic() - self._checked > FULL_CHECK_S:
                count = conn.execute(sa.select(sa.func.count()).select_from(embeddings)).scalar_one()
                if count != len(self.ids):
                    self._reload(conn)
                self._checked = time.monotonic()
            return self.ids, self.matrix

    def _append(self, conn: sa.Connection) -> None:
        after = int(self.ids[-1]) if len(self.ids) else -1
        ids, mat = _load(conn, embeddings.c.image_id > after)
        if len(ids) == 0:
            return
        if self.matrix.size == 0:
            self.ids, self.matrix = ids, mat
        else:
            self.ids = np.concatenate([self.ids, ids])
            self.matrix = np.concatenate([self.matrix, mat])

    def _reload(self, conn: sa.Connection) -> None:
        self.ids, self.matrix = _load(conn, sa.true())


def _load(conn: sa.Connection, where: sa.ColumnElement[bool]) -> tuple[np.ndarray, np.ndarray]:
    rows = conn.execute(sa.select(embeddings.c.image_id, embeddings.c.vector).where(where)
                        .order_by(embeddings.c.image_id)).all()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    mat = np.frombuffer(b"".join(bytes(r[1]) for r in rows), dtype="<f4").reshape(len(rows), -1)
    return ids, mat.astype(np.float32, copy=True)
