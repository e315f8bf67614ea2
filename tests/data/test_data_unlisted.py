"""Image files that a folder's metadata.jsonl does not list are ignored, and said to be: by
``limner data check`` (count and the first few paths) and once by training (issue 20)."""

from __future__ import annotations

import json
import shutil

from limner.cli.main import main
from limner.data.sources import scan_source


def _folder(fx, root):
    """2 listed images (one named as ./b.png) and 7 unlisted ones, with files that are not
    images or not candidates beside them."""
    fx.write_imagefolder(root, [("a.png", fx.png(), "a"), ("./b.png", fx.png(), "b")])
    unlisted = ["c.png", "d.PNG", "e.jpg", "f.webp", "g.gif", "sub/h.png", "sub/i.jpeg"]
    for name in unlisted:
        (root / name).parent.mkdir(exist_ok=True)
        fx.write(root / name, fx.png())
    for name in ("notes.bin", "README.md", ".hidden.png", "a.txt"):  # not counted
        fx.write(root / name, b"x")
    return [str(root / name) for name in unlisted]


def test_scan_lists_unlisted_image_files(fx, tmp_path):
    expected = _folder(fx, tmp_path)
    src = scan_source(tmp_path)
    assert [it.rel for it in src.items] == ["a.png", "b.png"]
    assert src.unlisted == expected  # in path order, whatever their case or folder
    assert scan_source(tmp_path, limit=1).unlisted == []  # not every line read: nothing said


def test_everything_listed_says_nothing(fx, tmp_path, capsys):
    fx.write_imagefolder(tmp_path, [("a.png", fx.png(), "a")])
    assert scan_source(tmp_path).unlisted == []
    assert main(["data", "check", str(tmp_path), "--quiet-progress"]) == 0
    assert "metadata.jsonl" not in capsys.readouterr().out


def test_data_check_reports_the_count_and_first_paths(fx, tmp_path, capsys):
    unlisted = _folder(fx, tmp_path)
    assert main(["data", "check", str(tmp_path), "--quiet-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    at = out.index("not in metadata.jsonl: 7 image files are in the folder but not listed, so ignored:")
    assert out[at + 1:at + 7] == [f"  {p}" for p in unlisted[:5]] + ["  ... and 2 more"]
    assert "usable: 2 of 2 files (0 skipped)" in out


def test_training_warns_once(tiny_data, cli, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    first = json.loads((data / "metadata.jsonl").read_text().splitlines()[0])["file_name"]
    for name in ("extra1.png", "images/extra2.png"):
        shutil.copy(data / first, data / name)
    proc = cli("train", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny", "--resolution", "16",
               "--steps", "1", "--batch-size", "4", "--no-progress", cache=tmp_path / "cache")
    assert proc.stderr.count("not in metadata.jsonl: 2 image files are in the folder but not listed") == 1, \
        proc.stderr
    assert str(data / "extra1.png") in proc.stderr and str(data / "images" / "extra2.png") in proc.stderr
