"""Source detection and the safe folder walk (RELIABILITY.md A6, A13, A14, A15)."""

from __future__ import annotations

import gzip
import json
import os
import unicodedata

import numpy as np
import pytest

from limner.data.arrays import ArraySource, read_idx
from limner.data.display import escape_path
from limner.data.sources import MAX_CAPTION_CHARS, FolderSource, scan_source
from limner.errors import DataError, UsageError


def rels(src: FolderSource) -> list[str]:
    return [it.rel for it in src.items]


def skipped_reasons(src: FolderSource) -> dict[str, str]:
    return {os.path.basename(s.path): s.reason for s in src.skipped}


def test_missing_path_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        scan_source(tmp_path / "absent")


def test_plain_folder_ignores_clutter(fx, tmp_path):
    fx.write(tmp_path / "a.png", fx.png())
    fx.write(tmp_path / "b.jpg", fx.jpeg())
    for name in [".DS_Store", "Thumbs.db", "desktop.ini", "notes.json", "README.md", "LICENSE", ".hidden.png"]:
        fx.write(tmp_path / name, b"clutter")
    (tmp_path / ".git").mkdir()
    fx.write(tmp_path / ".git" / "c.png", fx.png())
    (tmp_path / "__MACOSX").mkdir()
    fx.write(tmp_path / "__MACOSX" / "._a.png", b"resource fork")
    src = scan_source(tmp_path)
    assert src.kind == "plain" and rels(src) == ["a.png", "b.jpg"] and src.skipped == []
    assert src.items[0].caption is None and src.items[0].label is None


def test_plain_folder_is_recursive_and_sorted(fx, tmp_path):
    (tmp_path / "sub").mkdir()
    fx.write(tmp_path / "z.png", fx.png())
    fx.write(tmp_path / "sub" / "a.png", fx.png())
    src = scan_source(tmp_path)
    assert src.kind == "plain" and rels(src) == ["sub/a.png", "z.png"]


def test_sidecar_captions(fx, tmp_path):
    for stem in ["a", "b", "c", "d", "e", "f", "g"]:
        fx.write(tmp_path / f"{stem}.png", fx.png())
    (tmp_path / "a.txt").write_text("  a red\n  circle ")
    (tmp_path / "b.txt").write_text("")
    fx.write(tmp_path / "c.txt", b"\xff\xfe bad utf-8 \xc3")
    fx.write(tmp_path / "d.txt", b"PNG\x00\x01binary")
    fx.write(tmp_path / "e.txt", "\ufeffbom caption".encode())
    fx.write(tmp_path / "f.txt", ("word " * 3000).encode())  # ~15 kB
    # g has no sidecar
    src = scan_source(tmp_path)
    captions = {it.rel: it.caption for it in src.items}
    assert src.kind == "captions"
    assert captions == {
        "a.png": "a red circle", "b.png": "", "c.png": "", "d.png": "", "e.png": "bom caption",
        "f.png": captions["f.png"], "g.png": "",
    }
    assert 0 < len(captions["f.png"]) <= MAX_CAPTION_CHARS
    issues = {os.path.basename(i.path): i.reason for i in src.caption_issues}
    assert set(issues) == {"c.txt", "d.txt", "f.txt"}
    assert "UTF-8" in issues["c.txt"] and "binary" in issues["d.txt"] and "truncated" in issues["f.txt"]


def test_classes(fx, tmp_path):
    for cls, n in [("dog", 2), ("cat", 1), ("bird", 1)]:
        (tmp_path / cls / "nested").mkdir(parents=True)
        for i in range(n):
            fx.write(tmp_path / cls / f"{i}.png", fx.png())
    fx.write(tmp_path / "bird" / "nested" / "deep.png", fx.png())
    (tmp_path / "empty").mkdir()
    src = scan_source(tmp_path)
    assert src.kind == "classes" and src.class_names == ["bird", "cat", "dog"]
    assert [(it.rel, it.label) for it in src.items] == [
        ("bird/0.png", 0), ("bird/nested/deep.png", 0), ("cat/0.png", 1), ("dog/0.png", 2), ("dog/1.png", 2),
    ]


def test_single_subfolder_is_plain(fx, tmp_path):
    (tmp_path / "images").mkdir()
    fx.write(tmp_path / "images" / "a.png", fx.png())
    assert scan_source(tmp_path).kind == "plain"


def test_top_level_image_makes_folders_plain(fx, tmp_path):
    for cls in ["a", "b"]:
        (tmp_path / cls).mkdir()
        fx.write(tmp_path / cls / "x.png", fx.png())
    fx.write(tmp_path / "top.png", fx.png())
    assert scan_source(tmp_path).kind == "plain"


def test_imagefolder_metadata(fx, tmp_path):
    fx.write_imagefolder(tmp_path, [("images/a.png", fx.png(), "a cat"), ("b.png", fx.png(), None)])
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    fx.write(outside, fx.png())
    os.symlink(outside, tmp_path / "link.png")
    extra = [
        "not json",
        json.dumps({"text": "no file name"}),
        json.dumps({"file_name": "../escape.png", "text": "x"}),
        json.dumps({"file_name": "/etc/passwd", "text": "x"}),
        json.dumps({"file_name": "link.png", "text": "x"}),
        json.dumps({"file_name": "missing.png", "text": "x"}),
        json.dumps({"file_name": "images/a.png", "text": "dup"}),
        json.dumps({"file_name": "b.png", "text": 5}),
        "",
    ]
    with open(tmp_path / "metadata.jsonl", "a") as f:
        f.write("\n".join(extra) + "\n")
    fx.write(tmp_path / "unlisted.png", fx.png())  # only listed files are used
    src = scan_source(tmp_path)
    assert src.kind == "imagefolder"
    assert [(it.rel, it.caption) for it in src.items] == [("images/a.png", "a cat"), ("b.png", "")]
    reasons = [s.reason for s in src.skipped]
    assert reasons[0].startswith("invalid JSON") and reasons[1] == "no file_name string"
    assert [s.path for s in src.skipped[:2]] == ["metadata.jsonl line 3", "metadata.jsonl line 4"]
    for line, name in [(5, "../escape.png"), (6, "/etc/passwd"), (7, "link.png")]:
        assert any(s.path == name and f"line {line}: file_name escapes" in s.reason for s in src.skipped)
    assert any("missing" in s.reason and "line 8" in s.reason for s in src.skipped)
    assert any("duplicate of line 1" in s.reason for s in src.skipped)


def test_imagefolder_limit(fx, tmp_path):
    fx.write_imagefolder(tmp_path, [(f"{i}.png", fx.png(), str(i)) for i in range(5)])
    assert rels(scan_source(tmp_path, limit=2)) == ["0.png", "1.png"]


def test_imagefolder_bad_utf8_metadata(tmp_path):
    (tmp_path / "metadata.jsonl").write_bytes(b'{"file_name": "\xff.png"}\n')
    with pytest.raises(DataError, match="metadata.jsonl"):
        scan_source(tmp_path)


def test_symlinks_outside_special_and_loops(fx, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    fx.write(root / "real.png", fx.png())
    fx.write(tmp_path / "secret.png", fx.png())
    os.symlink(tmp_path / "secret.png", root / "outside.png")
    os.symlink("/dev/zero", root / "zero.png")
    os.symlink("loop-b.png", root / "loop-a.png")
    os.symlink("loop-a.png", root / "loop-b.png")
    os.symlink("self.png", root / "self.png")
    os.symlink(".", root / "again")  # directory loop
    os.symlink("nowhere.png", root / "dangling.png")
    os.symlink("real.png", root / "inside.png")
    os.mkfifo(root / "pipe.png")
    src = scan_source(root)
    assert rels(src) == ["inside.png", "real.png"]
    reasons = skipped_reasons(src)
    assert "outside" in reasons["outside.png"] and "outside" in reasons["zero.png"]
    for name in ["loop-a.png", "loop-b.png", "self.png", "dangling.png"]:
        assert "loop" in reasons[name]
    assert "not followed" in reasons["again"] and "not a regular file" in reasons["pipe.png"]


def test_odd_filenames(fx, bytes_tmp):
    names = [
        b"with space.png", b"new\nline.png", b"-leading-dash.png", b"bad\xffbyte.png",
        b"x" * 251 + b".png", unicodedata.normalize("NFC", "caf\u00e9.png").encode(),
        unicodedata.normalize("NFD", "caf\u00e9.png").encode(),
    ]
    for name in names:
        fx.write(os.path.join(bytes_tmp, name), fx.png())
    fx.write(os.path.join(bytes_tmp, b"bad\xffbyte.txt"), b"odd caption")
    src = scan_source(os.fsdecode(bytes_tmp))
    assert src.kind == "captions" and len(src.items) == len(names)
    by_rel = {it.rel: it for it in src.items}
    assert by_rel[os.fsdecode(b"bad\xffbyte.png")].caption == "odd caption"
    for it in src.items:
        assert os.path.exists(it.path)
        shown = escape_path(it.path)
        assert "\n" not in shown
        shown.encode("utf-8")  # printable without surrogate errors
    assert escape_path(os.fsdecode(b"bad\xffbyte.png")) == "bad\\xffbyte.png"
    assert escape_path("new\nline.png") == "new\\nline.png"


# ---------------------------------------------------------------- idx and npz


@pytest.mark.parametrize("gz", [True, False])
def test_idx_file_and_folder(fx, tmp_path, gz):
    images_path = fx.write_idx_pair(tmp_path, n=12, gz=gz)
    fx.write_idx_pair(tmp_path, n=5, gz=gz, prefix="t10k", classes=False)
    for target in (images_path, tmp_path):
        src = scan_source(target)
        assert isinstance(src, ArraySource) and src.kind == "idx"
        assert src.images.shape == (12, 28, 28, 1) and src.labels.dtype == np.int64
        assert src.labels.tolist() == [i % 3 for i in range(12)]
        assert src.class_names == ["zero", "one", "two"]
    assert scan_source(images_path, limit=4).images.shape[0] == 4


def test_idx_errors(fx, tmp_path):
    path = tmp_path / "x-images-idx3-ubyte"
    fx.write(path, fx.idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-100])
    with pytest.raises(DataError, match="truncated IDX"):
        scan_source(path)
    fx.write(path, b"\x00\x00\x0d\x03" + b"\x00" * 12)  # float dtype
    with pytest.raises(DataError, match="unsigned-byte"):
        scan_source(path)
    # a header that declares 4e9 rows of 28x28 must fail on the data, not allocate for it
    fx.write(path, b"\x00\x00\x08\x03" + np.array([0xFFFFFFFF, 28, 28], ">u4").tobytes() + b"\0" * 784)
    with pytest.raises(DataError, match="truncated"):
        scan_source(path)
    gz = tmp_path / "y-images-idx3-ubyte.gz"
    packed = gzip.compress(np.random.default_rng(0).bytes(4000))
    fx.write(gz, gzip.compress(fx.idx_bytes(np.zeros((2, 4, 4), np.uint8)))[:20])
    with pytest.raises(DataError):
        read_idx(str(gz), ndim=3)
    fx.write(gz, packed)  # gzip of random bytes: not IDX
    with pytest.raises(DataError):
        read_idx(str(gz), ndim=3)


def test_npz(tmp_path):
    path = tmp_path / "d.npz"
    images = np.random.default_rng(0).integers(0, 256, (6, 10, 12, 3), dtype=np.uint8)
    np.savez(path, images=images, labels=np.arange(6) % 2, captions=np.array([f"c{i}" for i in range(6)]),
             class_names=np.array(["even", "odd"]))
    src = scan_source(path)
    assert src.kind == "npz" and src.images.shape == (6, 10, 12, 3)
    assert src.labels.tolist() == [0, 1, 0, 1, 0, 1] and src.captions[2] == "c2"
    assert src.class_names == ["even", "odd"]
    np.savez(path, images=images[..., 0])
    assert scan_source(path).images.shape == (6, 10, 12, 1)


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"images": np.zeros((2, 4, 4), np.float32)}, "uint8"),
        ({"pixels": np.zeros((2, 4, 4), np.uint8)}, "no 'images'"),
        ({"images": np.zeros((2, 4, 4, 2), np.uint8)}, "C in 1, 3, 4"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(3, np.int64)}, "labels"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "captions": np.array(["a"])}, "captions"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "captions": np.array(["a", None], dtype=object)}, "pickle"),
    ],
)
def test_npz_refused(tmp_path, arrays, match):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match):
        scan_source(path)


def test_not_a_dataset_file(fx, tmp_path):
    fx.write(tmp_path / "one.png", fx.png())
    with pytest.raises(DataError, match="not a dataset"):
        scan_source(tmp_path / "one.png")
    fx.write(tmp_path / "broken.npz", b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="cannot read npz"):
        scan_source(tmp_path / "broken.npz")
