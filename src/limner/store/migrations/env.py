"""Alembic environment for the gallery database: always run programmatically by
``limner.store.db.migrate`` with an open connection in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from limner.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable from the alembic command line
    raise RuntimeError("limner's migrations run from limner.store.db.migrate(), not the alembic CLI")
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
