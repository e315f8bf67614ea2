"""Crash safety: a process killed between file write and row commit is reconciled at the next
open; rows without files are flagged; unusable files are quarantined, never deleted."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from limner.store import Filters, Store

from .conftest import make_record, write_png

ROOT = Path(__file__).resolve().parents[2]


def test_kill_between_file_and_row_then_reconcile(db_url, home):
    store = Store.open(db_url, home=home)
    alice = store.create_user("alice", None)
    store.close()
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from limner.store import Store
        from tests.store.conftest import make_record, write_png
        store = Store.open({db_url!r}, home=Path({str(home)!r}))
        alice = store.user_by_name("alice")
        record = make_record("a lighthouse in fog", seed=42)
        path = write_png(store.new_image_path(alice, "crash"), record)
        print(path, flush=True)
        store.add_image(path, record, alice)  # dies here, after the file, before the row
        print("not reached", flush=True)
    """)
    env = {**os.environ, "LIMNER_STORE_CRASH_AT": "add_image.before_commit"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr
    assert "not reached" not in proc.stdout
    orphan = Path(proc.stdout.split()[0])
    assert orphan.is_file()

    store = Store.open(db_url, home=home)
    try:
        assert store.search(alice, mode="text").items == []  # the row never committed
        report = store.reconcile()
        rel = orphan.relative_to(home).as_posix()
        assert report.registered == [rel]
        page = store.search(alice, "lighthouse", mode="text")
        assert [i.path for i in page.items] == [rel]
        assert page.items[0].seed == 42 and page.items[0].owner_id == alice.id
        assert not store.reconcile().changed  # a second pass has nothing to do
    finally:
        store.close()


def test_missing_files_flagged_and_unusable_files_quarantined(store, add, home):
    alice = store.create_user("alice", None)
    kept = add(alice, "kept", seed=1)
    lost = add(alice, "lost", seed=2)
    lost_path = home / store.get_image(alice, lost).path
    saved = lost_path.read_bytes()
    lost_path.unlink()
    junk = home / "images" / f"u{alice.id}" / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    no_record = home / "images" / f"u{alice.id}" / "plain.png"
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(no_record)
    stranger = home / "images" / "u999" / "x.png"
    write_png(stranger, make_record(seed=5))
    temp = home / "images" / f"u{alice.id}" / ".partial.png.1234.tmp"
    temp.write_bytes(b"half")

    report = store.reconcile()
    assert report.missing == [lost] and report.registered == []
    assert sorted(Path(p).name for p, _ in report.quarantined) == ["junk.png", "plain.png", "x.png"]
    reasons = dict(report.quarantined)
    assert "no limner generation record" in reasons[f"images/u{alice.id}/plain.png"]
    assert "u999 does not exist" in reasons["images/u999/x.png"]
    quarantined = list((home / "quarantine").rglob("*.png"))
    assert len(quarantined) == 3 and all(p.with_name(p.name + ".reason.txt").is_file() for p in quarantined)
    assert temp.exists()  # temp files of atomic writes are not images
    assert store.get_image(alice, lost).missing_at is not None
    assert store.get_image(alice, kept).missing_at is None

    lost_path.write_bytes(saved)  # the file comes back (a remounted disk)
    assert store.reconcile().found_again == [lost]
    assert store.get_image(alice, lost).missing_at is None
    assert len(store.search(alice, filters=Filters()).items) == 2
