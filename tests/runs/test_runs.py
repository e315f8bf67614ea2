"""Run-folder reading without torch: newest valid checkpoint, summaries, metrics, sample grids."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pytest

from limner.errors import CheckpointError
from limner.runs import (CheckpointWarning, find_latest_valid, list_runs, model_hash, newest_checkpoint_step,
                         read_metrics, read_run_config, run_summary, sample_grids, step_dir_name,
                         verify_checkpoint)


def fake_checkpoint(run: Path, step: int, payload: bytes = b"weights") -> Path:
    """A checkpoint folder with the layout and manifest training writes (bytes stand in for
    tensors: reading the layout never parses them)."""
    folder = run / "checkpoints" / step_dir_name(step)
    folder.mkdir(parents=True)
    files = {"model_ema.safetensors": payload + str(step).encode(), "state.pt": b"state"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest = {"format": 1, "step": step, "files": {
        n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "hearts"
    run.mkdir(parents=True)
    config = {"family": {"name": "diffusion", "config": {"encoder": {"kind": "text"}}},
              "data": {"resolution": 32}, "limner_version": "0.1.0"}
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_newest_valid_checkpoint_skips_a_damaged_newer_one(run):
    fake_checkpoint(run, 100)
    good = fake_checkpoint(run, 200)
    bad = fake_checkpoint(run, 300)
    (bad / "model_ema.safetensors").write_bytes(b"torn write")
    with pytest.warns(CheckpointWarning, match="sha256 mismatch"):
        assert find_latest_valid(run) == good
    assert newest_checkpoint_step(run) == 300  # the cheap listing does not hash
    with pytest.raises(CheckpointError, match="size mismatch|sha256"):
        verify_checkpoint(bad)
    assert len(model_hash(good, ["model_ema"])) == 12
    incomplete = run / "checkpoints" / step_dir_name(400)
    incomplete.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        assert find_latest_valid(run) == good


def test_summary_and_listing(run, tmp_path):
    fake_checkpoint(run, 50)
    summary = run_summary(run)
    assert summary["name"] == "hearts" and summary["family"] == "diffusion"
    assert (summary["cond"], summary["resolution"], summary["step"]) == ("text", 32, 50)
    (tmp_path / "runs" / "not-a-run").mkdir()
    broken = tmp_path / "runs" / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert [r["name"] for r in list_runs(tmp_path / "runs")] == ["hearts"]
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_run_config(broken)
    with pytest.raises(CheckpointError, match="not a limner run folder"):
        read_run_config(tmp_path / "runs" / "not-a-run")


def test_metrics_tolerate_a_line_being_written(run):
    rows = [{"step": i, "loss": 1.0 / (i + 1)} for i in range(5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')
    assert read_metrics(run) == rows
    assert read_metrics(run, limit=2) == rows[-2:]
    assert read_metrics(run.parent / "absent") == []


def test_sample_grids_leave_out_links_and_strays(run, tmp_path):
    samples = run / "samples"
    samples.mkdir()
    for step in (200, 100):
        (samples / f"step_{step:06d}.png").write_bytes(b"png")
    (samples / "notes.png").write_bytes(b"x")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    os.symlink(secret, samples / "step_000300.png")
    grids = sample_grids(run)
    assert list(grids) == [100, 200] and all(p.parent == samples.resolve() for p in grids.values())
