"""Run under ``torchrun --nproc_per_node=2``: train (or resume) a toy run with DDP on gloo.

Usage: ddp_script.py RUN_DIR STEPS RESUME(0/1) REPORT_DIR
Each rank writes REPORT_DIR/rank<r>.json with its final weights digest and what it tried to write.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from toy_family import ToyFamily, make_trainer, toy_data  # noqa: E402

import limner.training.trainer as trainer_module  # noqa: E402


def main() -> int:
    run_dir, steps, resume, report_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", Path(sys.argv[4])
    faulthandler.enable(all_threads=True)  # a native abort prints where Python was
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    writes: list[str] = []
    if rank != 0:  # record (and block) any write a non-zero rank attempts
        def refuse(name):
            def _refuse(*args, **kwargs):
                writes.append(name)
                raise AssertionError(f"rank {rank} tried to {name}")
            return _refuse
        trainer_module.write_checkpoint = refuse("write_checkpoint")
        trainer_module.write_json_atomic = refuse("write_json_atomic")
    fam = ToyFamily()
    trainer = make_trainer(run_dir, fam, toy_data(24), resume=resume, steps=steps, save_every=3,
                           sample_every=3, sample_count=2, tensorboard=True, grad_accum=2)
    world = trainer.dist.world_size
    start = trainer.step
    wrapper = type(trainer.nets["model"]).__name__  # the DDP wrappers are released by fit()
    result = trainer.fit()
    digest = hashlib.sha256()
    for key, value in sorted(fam.net.state_dict().items()):
        digest.update(key.encode() + value.cpu().numpy().tobytes())
    for key, value in sorted(trainer.ema.shadow["model"].items()):
        digest.update(key.encode() + value.cpu().numpy().tobytes())
    report = {"rank": rank, "world": world, "start": start, "step": result.step,
              "loss": result.metrics["loss"], "finite": math.isfinite(result.metrics["loss"]),
              "digest": digest.hexdigest(), "writes": writes, "seen": fam.seen,
              "wrapper": wrapper}
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / f"rank{rank}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
