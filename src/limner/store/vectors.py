"""In-memory copy of the prompt embeddings for exact semantic search (one copy per distinct prompt).

Exact search is one matrix-vector product over every distinct stored vector: at 100,000
images x 384 float32 that is at most ~150 MB held once per process and ~30 ms per query on one
busy core when every prompt is distinct, far less when prompts repeat (figures in
``benchmarks/search_latency.py``), so an approximate index does not pay at this scale. The cache follows the table incrementally (see ``VectorCache.refresh``).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import sqlalchemy as sa

from limner.store.tables import embeddings


FULL_CHECK_S = 30.0


class VectorCache:
    """ids [N] int64 (ascending), and their vectors stored once per distinct prompt: ``unique``
    [U, D] float32 with ``row`` [N] pointing into it. Galleries repeat prompts (a batch of
    seeds, small edits re-run), so scoring U distinct vectors and gathering is several times
    cheaper than N products; with every prompt distinct it costs the same as a plain scan."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ids = np.zeros(0, dtype=np.int64)
        self.row = np.zeros(0, dtype=np.int64)
        self.unique = np.zeros((0, 0), dtype=np.float32)
        self._index: dict[bytes, int] = {}
        self._checked = float("-inf")

    def refresh(self, conn: sa.Connection) -> "VectorCache":
        """Bring the cache up to date with the table.

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
                self._add(conn, embeddings.c.image_id > (have_top if have_top is not None else -1))
            if time.monotonic() - self._checked > FULL_CHECK_S:
                count = conn.execute(sa.select(sa.func.count()).select_from(embeddings)).scalar_one()
                if count != len(self.ids):
                    self.__init__()
                    self._add(conn, sa.true())
                self._checked = time.monotonic()
            return self

    def scores(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N], cosine similarity [N]) of every cached vector with the unit ``query`` [D]."""
        with self._lock:
            ids, row, unique = self.ids, self.row, self.unique
        if len(ids) == 0:
            return ids, np.zeros(0, dtype=np.float32)
        # einsum runs in this thread (SIMD, no BLAS): a BLAS matvec may wake a thread pool
        # that spins against the workers' own threads (measured 3x slower on a busy 2-core box).
        return ids, np.einsum("ud,d->u", unique, query.astype(np.float32, copy=False))[row]

    def _add(self, conn: sa.Connection, where: sa.ColumnElement[bool]) -> None:
        rows = conn.execute(sa.select(embeddings.c.image_id, embeddings.c.vector).where(where)
                            .order_by(embeddings.c.image_id)).all()
        if not rows:
            return
        fresh: list[bytes] = []
        new_rows = np.empty(len(rows), dtype=np.int64)
        for k, (_, blob) in enumerate(rows):
            blob = bytes(blob)
            at = self._index.get(blob)
            if at is None:
                at = self._index[blob] = len(self._index)
                fresh.append(blob)
            new_rows[k] = at
        if fresh:
            mat = np.frombuffer(b"".join(fresh), dtype="<f4").reshape(len(fresh), -1).astype(np.float32)
            self.unique = mat if self.unique.size == 0 else np.concatenate([self.unique, mat])
        new_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        self.ids = np.concatenate([self.ids, new_ids])
        self.row = np.concatenate([self.row, new_rows])
