"""load_dataset: every source kind, bad files skipped with their path, the on-disk cache, and
validator == loader (RELIABILITY.md A1, A16, A19)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import limner.data.dataset as dataset_module
from limner.data.cache import default_cache_dir
from limner.data.check import check_dataset
from limner.data.dataset import ImageDataset, load_dataset
from limner.errors import DataError, UsageError


def load(path, resolution=16, **kw) -> ImageDataset:
    return load_dataset(path, resolution, progress=False, **kw)


def count_decodes(monkeypatch) -> list[str]:
    """Record every call of the decode function the loader uses."""
    calls: list[str] = []
    real = dataset_module.decode_image

    def spy(source, **kw):
        calls.append(kw.get("name", ""))
        return real(source, **kw)

    monkeypatch.setattr(dataset_module, "decode_image", spy)
    return calls


def write_corpus(fx, folder: Path, names) -> None:
    files = fx.corpus()
    for name in names:
        fx.write(folder / name, files[name])


# ---------------------------------------------------------------- source kinds


def test_plain_folder_with_bad_files_skipped_not_fatal(fx, tmp_path, caplog):
    write_corpus(fx, tmp_path, fx.corpus())
    with caplog.at_level(logging.WARNING, logger="limner.data.dataset"):
        ds = load(tmp_path)
    good = sorted(n for n in fx.corpus() if not n.startswith("bad-"))
    bad = sorted(n for n in fx.corpus() if n.startswith("bad-"))
    assert ds.source_kind == "plain" and len(ds) == len(good)
    assert ds.images.shape == (len(good), 16, 16, 3) and ds.images.dtype == np.uint8
    assert [os.path.basename(p) for p in ds.paths] == good
    assert sorted(os.path.basename(s.path) for s in ds.skipped) == bad
    assert all(os.path.isabs(s.path) and s.reason for s in ds.skipped)
    assert ds.captions is None and ds.labels is None and ds.channels == 3 and ds.resolution == 16
    assert f"{len(bad)} of {len(fx.corpus())} files skipped" in caplog.text


def test_imagefolder_captions(fx, tmp_path):
    fx.write_imagefolder(tmp_path, [("a.png", fx.png(), "first"), ("b.png", b"", "broken"), ("c.png", fx.png(40, 10), None)])
    ds = load(tmp_path)
    assert ds.source_kind == "imagefolder" and ds.captions == ["first", ""]
    assert [os.path.basename(p) for p in ds.paths] == ["a.png", "c.png"]
    assert ds.skipped[0].reason == "empty file"


def test_sidecar_captions(fx, tmp_path):
    fx.write(tmp_path / "a.png", fx.png())
    fx.write(tmp_path / "b.png", fx.png())
    (tmp_path / "a.txt").write_text("hello")
    ds = load(tmp_path)
    assert ds.source_kind == "captions" and ds.captions == ["hello", ""]


def test_classes_channels_1(fx, tmp_path):
    for cls in ["b", "a"]:
        (tmp_path / cls).mkdir()
        fx.write(tmp_path / cls / "x.png", fx.png())
    fx.write(tmp_path / "a" / "bad.png", b"junk")
    ds = load(tmp_path, channels=1)
    assert ds.source_kind == "classes" and ds.class_names == ["a", "b"]
    assert ds.labels.tolist() == [0, 1] and ds.labels.dtype == np.int64
    assert ds.images.shape == (2, 16, 16, 1) and ds.channels == 1


@pytest.mark.parametrize("gz", [True, False])
def test_idx(fx, tmp_path, gz):
    fx.write_idx_pair(tmp_path, n=10, gz=gz)
    native = load(tmp_path, 28)
    assert native.source_kind == "idx" and native.images.shape == (10, 28, 28, 1) and native.channels == 1
    assert native.labels.tolist() == [i % 3 for i in range(10)] and native.class_names == ["zero", "one", "two"]
    assert native.paths[3].endswith("train-images-idx3-ubyte" + (".gz" if gz else "") + "#3")
    resized = load(tmp_path, 32, channels=3)
    assert resized.images.shape == (10, 32, 32, 3)
    assert (resized.images[..., 0] == resized.images[..., 2]).all()
    assert load(tmp_path, 28, limit=4).images.shape[0] == 4


def test_npz_with_alpha_and_non_square(tmp_path):
    images = np.zeros((3, 10, 20, 4), np.uint8)  # fully transparent
    np.savez(tmp_path / "d.npz", images=images, captions=np.array(["a", "b", "c"]))
    ds = load(tmp_path / "d.npz", 8, background=(0, 0, 255))
    assert ds.source_kind == "npz" and ds.images.shape == (3, 8, 8, 3) and ds.captions == ["a", "b", "c"]
    assert (ds.images == [0, 0, 255]).all() and ds.paths[1].endswith("d.npz#1")


def test_non_square_and_tiny_images(fx, tmp_path):
    fx.write(tmp_path / "wide.png", fx.png(300, 20))
    fx.write(tmp_path / "tall.png", fx.png(7, 90))
    fx.write(tmp_path / "dot.png", fx.png(1, 1))
    assert load(tmp_path, 32).images.shape == (3, 32, 32, 3)


def test_background_option(fx, tmp_path):
    fx.write(tmp_path / "clear.png", fx.encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"))
    assert (load(tmp_path, 8, background=(1, 2, 3)).images == [1, 2, 3]).all()
    assert (load(tmp_path, 8).images == 255).all()


# ---------------------------------------------------------------- nothing usable, bad arguments


def test_nothing_usable_is_data_error(fx, tmp_path):
    for i in range(7):
        fx.write(tmp_path / f"bad{i}.png", b"")
    with pytest.raises(DataError) as info:
        load(tmp_path)
    msg = str(info.value)
    assert msg.startswith("0 of 7 files decodable in ") and "first 5 errors" in msg
    assert msg.count("empty file") == 5


def test_empty_folder_is_data_error(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        load(tmp_path)


@pytest.mark.parametrize(
    "kw",
    [{"resolution": 0}, {"resolution": True}, {"resolution": 8.5}, {"channels": 2}, {"background": (0, 0)},
     {"background": (0, 0, 300)}, {"limit": 0}],
)
def test_bad_arguments(fx, tmp_path, kw):
    fx.write(tmp_path / "a.png", fx.png())
    args = {"resolution": 8} | kw
    with pytest.raises(UsageError):
        load_dataset(tmp_path, args.pop("resolution"), progress=False, **args)


def test_missing_path(tmp_path):
    with pytest.raises(UsageError):
        load(tmp_path / "nope")


# ---------------------------------------------------------------- cache


def test_second_load_reads_cache_without_decoding(fx, tmp_path, monkeypatch):
    write_corpus(fx, tmp_path, ["good.png", "good.jpg", "bad-empty.png", "bad-truncated.png"])
    first = load(tmp_path)
    cache_files = list(default_cache_dir().glob("*.npz"))
    assert len(cache_files) == 1 and not list(default_cache_dir().glob(".tmp-*"))
    calls = count_decodes(monkeypatch)
    second = load(tmp_path)
    assert calls == []
    assert np.array_equal(first.images, second.images) and first.paths == second.paths
    assert [(s.path, s.reason) for s in first.skipped] == [(s.path, s.reason) for s in second.skipped]
    assert first.content_hash == second.content_hash


def test_cache_invalidated_when_a_file_changes(fx, tmp_path, monkeypatch):
    fx.write(tmp_path / "a.png", fx.encode(Image.new("RGB", (8, 8), (255, 0, 0)), "PNG"))
    fx.write(tmp_path / "b.png", fx.png())
    first = load(tmp_path, 8)
    fx.write(tmp_path / "a.png", fx.encode(Image.new("RGB", (8, 8), (0, 0, 255)), "PNG"))
    calls = count_decodes(monkeypatch)
    second = load(tmp_path, 8)
    assert len(calls) == 2 and first.content_hash != second.content_hash
    assert tuple(second.images[0, 0, 0]) == (0, 0, 255)


def test_cache_keyed_by_settings(fx, tmp_path, monkeypatch):
    fx.write(tmp_path / "a.png", fx.png())
    hashes = {load(tmp_path, r, channels=c).content_hash for r in (8, 16) for c in (1, 3)}
    assert len(hashes) == 4 and len(list(default_cache_dir().glob("*.npz"))) == 4


def test_caption_change_keeps_pixels_cached_but_changes_hash(fx, tmp_path, monkeypatch):
    fx.write(tmp_path / "a.png", fx.png())
    (tmp_path / "a.txt").write_text("one")
    first = load(tmp_path)
    (tmp_path / "a.txt").write_text("two")
    calls = count_decodes(monkeypatch)
    second = load(tmp_path)
    assert calls == [] and second.captions == ["two"] and first.content_hash != second.content_hash


def test_corrupt_cache_ignored_and_rebuilt(fx, tmp_path, monkeypatch, caplog):
    fx.write(tmp_path / "a.png", fx.png())
    first = load(tmp_path)
    (cache_file,) = default_cache_dir().glob("*.npz")
    cache_file.write_bytes(b"PK\x03\x04 garbage")
    calls = count_decodes(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="limner.data.cache"):
        second = load(tmp_path)
    assert len(calls) == 1 and np.array_equal(first.images, second.images)
    assert "ignoring unusable dataset cache" in caplog.text
    load(tmp_path)
    assert len(calls) == 1  # the rebuilt cache is used again


def test_unwritable_cache_dir_does_not_fail(fx, tmp_path, caplog):
    fx.write(tmp_path / "a.png", fx.png())
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="limner.data.cache"):
        ds = load(tmp_path, cache_dir=blocker / "cache")
    assert len(ds) == 1 and "could not write dataset cache" in caplog.text


def test_explicit_cache_dir_and_env(fx, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    fx.write(data / "a.png", fx.png())
    load(data, cache_dir=tmp_path / "mine")
    assert len(list((tmp_path / "mine").glob("*.npz"))) == 1
    monkeypatch.delenv("LIMNER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "limner" / "datasets"


def test_cache_survives_moving_the_folder(fx, tmp_path, monkeypatch):
    src = tmp_path / "one"
    src.mkdir()
    fx.write(src / "a.png", fx.png())
    first = load(src)
    shutil.move(src, tmp_path / "two")
    calls = count_decodes(monkeypatch)
    moved = load(tmp_path / "two")
    assert calls == [] and moved.content_hash == first.content_hash
    assert moved.paths == [str(tmp_path / "two" / "a.png")]


# ---------------------------------------------------------------- validator == loader


CORPUS_NAMES = sorted([
    "good.png", "good.jpg", "good.webp", "good.bmp", "good.gif", "rgba.png", "la.png", "onebit.png",
    "cmyk.jpg", "bad-empty.png", "bad-truncated.png", "bad-truncated.jpg", "bad-tiff.png",
    "bad-pdf.png", "bad-text.png", "bad-bomb.png", "bad-garbage.jpg",
])


def test_corpus_names_match_fixture(fx):
    assert CORPUS_NAMES == sorted(fx.corpus())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.sets(st.sampled_from(CORPUS_NAMES), min_size=1))
def test_check_accepts_exactly_what_the_loader_loads(fx, names):
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as cache:
        write_corpus(fx, Path(tmp), names)
        report = check_dataset(tmp)
        try:
            ds = load_dataset(tmp, 8, cache_dir=cache, progress=False)
        except DataError:
            assert report.usable == 0
            return
        assert report.usable_paths == ds.paths
        assert sorted(s.path for s in report.skipped) == sorted(s.path for s in ds.skipped)
        assert report.usable + len(report.skipped) == report.total == len(names)
