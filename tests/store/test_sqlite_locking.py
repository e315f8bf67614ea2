"""SQLite settings: WAL, busy timeout, BEGIN IMMEDIATE for writes (RELIABILITY.md item 79)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from limner.store import Store, StoreError
from limner.store.db import write_txn


@pytest.fixture
def sqlite_store(tmp_path):
    s = Store.open(None, home=tmp_path)
    yield s
    s.close()


def test_pragmas(sqlite_store):
    with sqlite_store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_write_transactions_take_the_lock_up_front(sqlite_store, tmp_path):
    other = sqlite3.connect(tmp_path / "gallery.db", timeout=0, isolation_level=None)
    with write_txn(sqlite_store.engine):
        # Our transaction holds the write lock before writing anything: a second writer with
        # no timeout fails at once, while a reader still reads.
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        assert other.execute("SELECT count(*) FROM users").fetchone() == (0,)
    other.execute("BEGIN IMMEDIATE")  # released at commit
    other.execute("ROLLBACK")
    with sqlite_store._read():  # a read transaction does not block writers
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    other.close()


def test_concurrent_writers_never_see_locked_errors(sqlite_store):
    users = [sqlite_store.create_user(f"u{i}", None) for i in range(4)]
    errors: list[BaseException] = []

    def submit(user) -> None:
        try:
            for i in range(15):
                sqlite_store.submit_job(user, "generate", {"i": i})
                sqlite_store.list_jobs(user)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=submit, args=(u,)) for u in users * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(len(sqlite_store.list_jobs(u)) for u in users) == 8 * 15


def test_a_damaged_database_file_is_refused_and_kept(tmp_path):
    db = tmp_path / "gallery.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store.open(None, home=tmp_path)
    assert db.read_bytes().startswith(b"this is not")


def test_pending_migration_backs_up_the_gallery_first(tmp_path):
    store = Store.open(None, home=tmp_path)
    store.create_user("alice", None)
    with store.engine.begin() as conn:  # pretend the gallery was made by another limner release
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    store.close()
    with pytest.raises(StoreError, match="'0000'.*newer limner"):  # unknown here: refused, data untouched
        Store.open(None, home=tmp_path)
    backup = tmp_path / "gallery.db.pre-0000.bak"
    assert backup.is_file()
    check = sqlite3.connect(backup)
    assert check.execute("SELECT username FROM users").fetchall() == [("alice",)]
    check.close()


def test_two_processes_write_one_gallery(tmp_path):
    """Two processes (two studios, or a studio and a worker) submit and claim jobs on one
    SQLite file at once: no "database is locked" reaches them and no job is claimed twice."""
    import subprocess
    import sys
    import textwrap

    Store.open(None, home=tmp_path).close()
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from limner.store import Store
        store = Store.open(None, home=Path({str(tmp_path)!r}))
        me = sys.argv[1]
        try:
            user = store.create_user(me, None)
        except Exception:
            user = store.user_by_name(me)
        claimed = []
        for i in range(40):
            store.submit_job(user, "generate", {{"i": i}})
            lease = store.claim_job(me, ["generate"])
            if lease is not None:
                assert store.complete_job(lease, {{"by": me}})
                claimed.append(lease.job.id)
        print(" ".join(claimed))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, name], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("p1", "p2")]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    claimed = [j for out, _ in outs for j in out.split()]
    assert len(claimed) == len(set(claimed)) == 80
