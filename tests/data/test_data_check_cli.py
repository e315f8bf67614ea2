"""``limner data check`` through ``limner.cli.main.main`` (RELIABILITY.md A16, A19)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from limner.cli.main import main
from limner.data.check import check_dataset, format_report


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["data", "check", *argv, "--quiet-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_counts_reasons_captions_and_sizes(fx, tmp_path, capsys):
    fx.write_imagefolder(tmp_path, [
        ("a.png", fx.png(20, 10), "a"), ("b.png", fx.png(20, 10), ""), ("c.jpg", fx.jpeg(8, 8), "c"),
        ("bad.png", b"", "bad"), ("spoof.png", fx.corpus()["bad-tiff.png"], "tiff"),
    ])
    code, out, _ = run(capsys, str(tmp_path), "--resolution", "16")
    assert code == 0
    assert "(imagefolder)" in out and "usable: 3 of 5 files (2 skipped)" in out
    assert "captions: 2 of 3 usable images captioned (66.7%)" in out
    assert "20x10" in out and "8x8" in out
    assert "at resolution 16: 3 images smaller than 16 px" in out
    assert f"{tmp_path / 'bad.png'}: empty file" in out
    assert f"{tmp_path / 'spoof.png'}: unsupported format TIFF" in out


def test_nothing_usable_exits_nonzero(fx, tmp_path, capsys):
    fx.write(tmp_path / "a.png", b"")
    fx.write(tmp_path / "b.png", b"not an image")
    code, out, err = run(capsys, str(tmp_path))
    assert code == 1
    assert "usable: 0 of 2 files" in out and "0 of 2 files decodable" in err


def test_empty_folder_exits_nonzero(tmp_path, capsys):
    code, _, err = run(capsys, str(tmp_path))
    assert code == 1 and "no image files found" in err


def test_missing_path_exits_2(tmp_path, capsys):
    code, _, err = run(capsys, str(tmp_path / "absent"))
    assert code == 2 and "no such file or directory" in err and err.count("\n") == 1


def test_bad_options_exit_2(fx, tmp_path, capsys):
    fx.write(tmp_path / "a.png", fx.png())
    assert run(capsys, str(tmp_path), "--resolution", "0")[0] == 2
    assert run(capsys, str(tmp_path), "--max-listed", "-1")[0] == 2


def test_bad_npz_exits_1_with_message(fx, tmp_path, capsys):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4), np.float64))
    code, _, err = run(capsys, str(tmp_path / "d.npz"))
    assert code == 1 and "uint8" in err


def test_classes_and_idx_reports(fx, tmp_path, capsys):
    fx.write_idx_pair(tmp_path, n=9)
    code, out, _ = run(capsys, str(tmp_path))
    assert code == 0 and "(idx)" in out and "usable: 9 of 9 array rows" in out
    assert "classes: 3 (zero: 3, one: 3, two: 3)" in out and "28x28" in out


def test_odd_names_escaped_one_per_line(fx, tmp_path):
    bad = os.path.join(os.fsencode(tmp_path), b"new\nline\xff.png")
    fx.write(bad, b"")
    fx.write(tmp_path / "ok.png", fx.png())
    text = format_report(check_dataset(tmp_path))
    line = [ln for ln in text.splitlines() if "empty file" in ln]
    assert line == [f"  {tmp_path}/new\\nline\\xff.png: empty file"]
    text.encode("utf-8")


def test_listing_is_capped(fx, tmp_path, capsys):
    for i in range(5):
        fx.write(tmp_path / f"bad{i}.png", b"")
    fx.write(tmp_path / "ok.png", fx.png())
    code, out, _ = run(capsys, str(tmp_path), "--max-listed", "2")
    assert code == 0 and "skipped (5):" in out and "... and 3 more" in out


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "check", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "Exit code 0" in out and "--resolution" in out
