"""DDP with two CPU processes (gloo) under torchrun: identical weights on both ranks, only rank 0
writes, and a second torchrun resumes the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from limner.training.checkpoint import checkpoint_dirs, find_latest_valid

SCRIPT = Path(__file__).with_name("ddp_script.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
]


def _torchrun(run_dir: Path, steps: int, resume: bool, report: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(SCRIPT), str(run_dir), str(steps), "1" if resume else "0", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return [json.loads((report / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_cpu_ranks_train_resume_and_agree(tmp_path):
    run_dir = tmp_path / "run"
    first = _torchrun(run_dir, 3, False, tmp_path / "r1")
    assert [r["world"] for r in first] == [2, 2]
    assert [r["wrapper"] for r in first] == ["DistributedDataParallel"] * 2
    assert first[0]["digest"] == first[1]["digest"]
    assert all(r["finite"] for r in first)
    assert not any(r["writes"] for r in first), [r["writes"] for r in first]
    # each rank took its own half of every global batch of 8
    assert all(len(r["seen"]) == 3 * 4 for r in first)
    assert set(first[0]["seen"][:4]).isdisjoint(first[1]["seen"][:4])
    # grad_accum=2: DDP all-reduces once per step, after the 2nd micro-batch only (no_sync before)
    assert all(r["syncs"] and sorted(set(r["syncs"])) == [2, 4, 6] for r in first), first

    second = _torchrun(run_dir, 6, True, tmp_path / "r2")
    assert [r["start"] for r in second] == [3, 3] and [r["step"] for r in second] == [6, 6]
    assert second[0]["digest"] == second[1]["digest"] != first[0]["digest"]
    assert not any(r["writes"] for r in second), [r["writes"] for r in second]
    assert all(sorted(set(r["syncs"])) == [2, 4, 6] for r in second)
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_000003", "step_000006"]
    assert find_latest_valid(run_dir).name == "step_000006"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3, 4, 6]  # log_every=2 and each run's last step
    assert {p.name for p in (run_dir / "samples").iterdir()} == {"step_000003.png", "step_000006.png"}
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
