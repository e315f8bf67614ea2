"""limner.store: the studio's persistent state (gallery database, search, accounts, job queue).

All SQL in limner lives in this package; it never imports torch (``tests/store`` checks it in
a process where torch is blocked). Open it with ``Store.open(url_or_None, home=Path)``:
SQLite at ``<home>/gallery.db`` by default, PostgreSQL with ``postgresql+psycopg://...``;
the same Alembic migrations (``limner/store/migrations``) run at open on both.

Semantic search needs a prompt embedder: pass ``embedder=`` (a callable texts -> float32
[N, D] unit rows), for example ``limner.conditioning.prompt_embed.embed_prompts``, which
loads MiniLM (and torch) on its first call, outside this package.
"""

from __future__ import annotations

from limner.store.errors import (AuthError, Conflict, Forbidden, IdempotencyMismatch, NotFound,
                                 QueueFull, SearchUnavailable, StoreError)
from limner.store.models import ApiKey, Beat, Board, Image, Job, Lease, Page, User
from limner.store.reconcile import ReconcileReport
from limner.store.search import Filters
from limner.store.store import Embedder, Store

__all__ = ["Store", "Embedder", "Filters", "ReconcileReport", "User", "ApiKey", "Image", "Board",
           "Job", "Lease", "Beat", "Page", "AuthError", "Conflict", "Forbidden", "IdempotencyMismatch",
           "NotFound", "QueueFull", "SearchUnavailable", "StoreError"]
