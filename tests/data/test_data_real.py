"""The real datasets in ../shared/data and the bundled demo subset data/emoji-demo."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from limner.data.check import check_dataset
from limner.data.dataset import load_dataset

DEMO = Path(__file__).resolve().parents[2] / "data" / "emoji-demo"


def test_noto_emoji(shared_data):
    root = shared_data / "noto-emoji"
    report = check_dataset(root, limit=300, resolution=32)
    assert report.source_kind == "imagefolder" and report.usable == 300 and not report.skipped
    assert report.captioned == 300 and dict(report.sizes) == {(64, 64): 300} and report.smaller == 0
    ds = load_dataset(root, 32, limit=200, progress=False)
    assert ds.images.shape == (200, 32, 32, 3) and len(ds.captions) == 200 and all(ds.captions)
    assert report.usable_paths[:200] == ds.paths
    # transparent corners were composited on white, before resizing
    assert (ds.images[:, 0, 0] == 255).all()


def test_fashion_mnist(shared_data):
    root = shared_data / "fashion-mnist"
    ds = load_dataset(root, 28, limit=2000, progress=False)
    assert ds.source_kind == "idx" and ds.images.shape == (2000, 28, 28, 1) and ds.channels == 1
    assert ds.labels.min() == 0 and ds.labels.max() == 9 and len(ds.class_names) == 10
    assert ds.class_names[9] == "Ankle boot" and ds.paths[0].endswith("train-images-idx3-ubyte.gz#0")
    assert 0 < ds.images.mean() < 255
    test_split = load_dataset(root / "t10k-images-idx3-ubyte.gz", 32, limit=100, progress=False)
    assert test_split.images.shape == (100, 32, 32, 1) and test_split.labels.shape == (100,)


def test_bundled_demo_dataset():
    rows = [json.loads(line) for line in (DEMO / "metadata.jsonl").read_text().splitlines()]
    assert 200 <= len(rows) <= 500 and all(r.keys() == {"file_name", "text"} for r in rows)
    assert len({r["text"] for r in rows}) == len(rows)
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total < 3 * 1024 * 1024
    notice = (DEMO / "LICENSE.md").read_text()
    assert "Open Font License 1.1" in notice and "Apache" in notice and "Google" in notice and "2.042" in notice
    report = check_dataset(DEMO)
    assert report.usable == len(rows) and not report.skipped and dict(report.sizes) == {(64, 64): len(rows)}
    assert report.captioned == len(rows)


def test_demo_subset_is_reproducible(shared_data):
    spec = importlib.util.spec_from_file_location("make_subset", DEMO / "make_subset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    source = shared_data / "noto-emoji"
    rows = [json.loads(line) for line in (source / "metadata.jsonl").read_text().splitlines()]
    chosen = [{"file_name": r["file_name"], "text": r["text"]} for r in module.select(rows)]
    bundled = [json.loads(line) for line in (DEMO / "metadata.jsonl").read_text().splitlines()]
    assert chosen == bundled
    for row in bundled[::37]:
        assert (DEMO / row["file_name"]).read_bytes() == (source / row["file_name"]).read_bytes()
    assert np.unique([r["text"].split(",")[0] for r in bundled]).size > 150
