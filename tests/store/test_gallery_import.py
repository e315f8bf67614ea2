"""``limner gallery import DIR``: registers limner PNGs from their embedded records."""

from __future__ import annotations

from PIL import Image

from limner.cli.main import main
from limner.store import Store

from .conftest import make_record, write_png


def test_import_registers_records_skips_strangers_and_is_idempotent(db_url, home, tmp_path, capsys):
    src = tmp_path / "out"
    write_png(src / "00000-1.png", make_record("a red heart", seed=1))
    write_png(src / "nested" / "00001-2.png", make_record("a blue square", seed=2, negative="blurry"))
    write_png(src / "copy-of-first.png", make_record("a red heart", seed=1))  # same pixels
    Image.new("RGB", (8, 8)).save(src / "plain.png")  # no record
    (src / "notes.txt").write_text("not an image")
    argv = ["gallery", "import", str(src), "--home", str(home), "--no-embed"]
    if db_url:
        argv += ["--db", db_url]

    assert main(argv) == 0
    out = capsys.readouterr()
    assert "imported 2, already in the gallery 1, skipped 1" in out.out
    assert "plain.png: no limner generation record" in out.err
    store = Store.open(db_url, home=home)
    try:
        local = store.ensure_local_user()
        page = store.search(local, "blurry", mode="text")
        assert [(i.prompt, i.seed) for i in page.items] == [("a blue square", 2)]
        assert page.items[0].path.startswith(f"images/u{local.id}/imported/nested/")
        assert (home / page.items[0].path).is_file()
        assert len(store.search(local, mode="text").items) == 2
        assert main(argv) == 0  # again: nothing new
        assert "imported 0, already in the gallery 3" in capsys.readouterr().out
        assert len(store.search(local, mode="text").items) == 2
        assert len(list((home / "images").rglob("*.png"))) == 2
    finally:
        store.close()


def test_import_names_a_missing_folder(tmp_path, capsys):
    assert main(["gallery", "import", str(tmp_path / "nope"), "--home", str(tmp_path)]) == 2
    assert "DIR" in capsys.readouterr().err
