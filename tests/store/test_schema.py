"""The migrations and ``limner.store.tables`` describe the same schema, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from limner.store.tables import metadata


def test_migrated_schema_matches_tables(store):
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    # The full-text objects (FTS5 table / tsvector column) live only in the migration.
    diff = [d for d in diff if "images_fts" not in str(d) and "search_tsv" not in str(d)]
    assert diff == []


def test_reopen_is_a_no_op_migration(store):
    from limner.store import Store

    with store.engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
    again = Store.open(str(store.engine.url.render_as_string(hide_password=False))
                       if store.dialect == "postgresql" else None, home=store.home)
    with again.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one() == version
    again.close()
