"""Database connections for the gallery: engine set-up, migrations and transactions.

SQLite (the embedded default, ``<home>/gallery.db``) runs in WAL mode with a busy timeout, and
every write transaction starts with ``BEGIN IMMEDIATE`` so it takes the write lock up front
instead of failing half way with "database is locked" when it upgrades a read lock (the
SQLite documentation's advice for concurrent writers; ComfyUI tests its database the same way).
Reads use a plain deferred ``BEGIN``. PostgreSQL (``postgresql+psycopg://...``) gets the same
migrations; its write transactions run at READ COMMITTED with row locks where they need them.

Migrations are Alembic revisions shipped inside the package and applied at open.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from limner.errors import LimnerError

BUSY_TIMEOUT_MS = 15_000
MIGRATIONS = Path(__file__).with_name("migrations")


class StoreError(LimnerError):
    """The gallery database cannot be opened or used (message names the database)."""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported by create_engine itself
        return "<database URL>"


def create_engine(url: str) -> Engine:
    """An engine for ``url`` with limner's SQLite pragmas and transaction handling."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if parsed.get_backend_name() != "postgresql":
        raise StoreError(f"{redact(url)}: only sqlite:/// and postgresql+psycopg:// URLs are supported")
    if parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=30)


def _sqlite_engine(url: str) -> Engine:
    # isolation_level=None hands transaction control to us (the sqlite3 module's own implicit
    # BEGIN would be deferred); the "begin" hook below emits BEGIN or BEGIN IMMEDIATE.
    engine = sa.create_engine(url, connect_args={"isolation_level": None, "check_same_thread": False,
                                                 "timeout": BUSY_TIMEOUT_MS / 1000})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI types
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints, safe in WAL mode
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("limner_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


@contextlib.contextmanager
def write_txn(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed on success, rolled back on any error."""
    with engine.connect().execution_options(limner_write=True) as conn, conn.begin():
        yield conn


@contextlib.contextmanager
def read_txn(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction (one consistent snapshot)."""
    with engine.connect() as conn, conn.begin():
        yield conn


def now(conn: Connection) -> float:
    """The current time in epoch seconds: the server's clock on PostgreSQL (so workers on
    several machines agree on lease expiry), this machine's on SQLite."""
    if conn.dialect.name == "postgresql":
        return float(conn.exec_driver_sql("SELECT extract(epoch FROM clock_timestamp())").scalar_one())
    return time.time()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is already there)."""
    from alembic import command
    from alembic.config import Config
    from alembic.util.exc import CommandError

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    _backup_before_upgrade(engine, cfg)
    with engine.connect().execution_options(limner_write=True) as conn:
        if conn.dialect.name == "postgresql":
            # Two processes opening one fresh database at once: the second waits here.
            conn.exec_driver_sql("SELECT pg_advisory_lock(7254190)")
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        except CommandError as e:  # e.g. a database migrated by a newer limner
            raise StoreError(f"{redact(str(engine.url))}: cannot migrate the gallery database ({e}); "
                             "it may come from a newer limner: upgrade limner") from None
        finally:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_unlock(7254190)")
                conn.commit()


def _backup_before_upgrade(engine: Engine, cfg) -> Path | None:  # noqa: ANN001 - alembic Config
    """Copy an SQLite gallery that has pending migrations to ``gallery.db.pre-<rev>.bak`` first
    (SQLite's online backup, consistent while others read). Migrations run in one transaction
    on both backends, so an interrupted one rolls back; the copy is for a migration that
    completes but is wrong. PostgreSQL backups are the server operator's (pg_dump)."""
    if engine.dialect.name != "sqlite" or not engine.url.database:
        return None
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    head = ScriptDirectory.from_config(cfg).get_current_head()
    if current is None or current == head:
        return None
    target = Path(engine.url.database).with_name(f"{Path(engine.url.database).name}.pre-{current}.bak")
    raw = engine.raw_connection()
    try:
        import sqlite3

        dest = sqlite3.connect(target)
        try:
            raw.driver_connection.backup(dest)
        finally:
            dest.close()
    finally:
        raw.close()
    return target


def check_sqlite_file(path: Path) -> None:
    """Refuse a file that is not an SQLite database, naming it (the file is left untouched)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        head = f.read(16)
    if head != b"SQLite format 3\x00":
        raise StoreError(
            f"{path}: not an SQLite database (damaged or another file); it was left as it is. "
            f"Move it aside to start a new gallery, or open another one with --db."
        )


def ensure_dir(path: Path) -> None:
    os.makedirs(path, exist_ok=True)
