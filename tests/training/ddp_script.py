"""Run under ``torchrun --nproc_per_node=2``: train (or resume) a toy run with DDP on gloo.

Usage: ddp_script.py RUN_DIR STEPS RESUME(0/1) REPORT_DIR
Each rank writes REPORT_DIR/rank<r>.json with its final weights digest, what it tried to write
(checkpoints and JSON refused; any other file opened for writing, folder made, renamed or removed
under RUN_DIR, seen by an audit hook: sample PNGs, TensorBoard events) and, for every gradient
all-reduce DDP ran, how many DDP forwards this process had run by then (a comm hook).
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


def _file_write_auditor(run_dir: Path, writes: list[str]):
    """An audit hook that records every file write, folder creation, rename or removal under
    ``run_dir`` (Python-level: PIL's and TensorBoard's files go through ``open``)."""
    root = os.path.realpath(run_dir) + os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def inside(path) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and \
            os.path.realpath(os.fsdecode(path)).startswith(root)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if (any(c in (mode or "") for c in "wax+") or (mode is None and flags & write_flags)) \
                    and inside(path):
                writes.append(f"open {os.fsdecode(path)}")
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir") and inside(args[0]):
            writes.append(f"{event} {os.fsdecode(args[0])}")

    return hook


def _record_gradient_syncs(ddp: torch.nn.Module) -> list[int]:
    """For each gradient all-reduce of ``ddp`` (one per bucket), the number of its forwards run so
    far: with gradient accumulation over k micro-batches, only multiples of k may appear."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    forwards, syncs = [0], []
    forward = ddp.forward

    def counting_forward(*args, **kwargs):
        forwards[0] += 1
        return forward(*args, **kwargs)

    def hook(state, bucket):
        syncs.append(forwards[0])
        return allreduce_hook(state, bucket)

    ddp.forward = counting_forward
    ddp.register_comm_hook(None, hook)
    return syncs


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
        sys.addaudithook(_file_write_auditor(Path(run_dir), writes))
    fam = ToyFamily()
    trainer = make_trainer(run_dir, fam, toy_data(24), resume=resume, steps=steps, save_every=3,
                           sample_every=3, sample_count=2, tensorboard=True, grad_accum=2)
    world = trainer.dist.world_size
    start = trainer.step
    wrapper = type(trainer.nets["model"]).__name__  # the DDP wrappers are released by fit()
    syncs = _record_gradient_syncs(trainer.nets["model"])
    result = trainer.fit()
    digest = hashlib.sha256()
    for key, value in sorted(fam.net.state_dict().items()):
        digest.update(key.encode() + value.cpu().numpy().tobytes())
    for key, value in sorted(trainer.ema.shadow["model"].items()):
        digest.update(key.encode() + value.cpu().numpy().tobytes())
    report = {"rank": rank, "world": world, "start": start, "step": result.step,
              "loss": result.metrics["loss"], "finite": math.isfinite(result.metrics["loss"]),
              "digest": digest.hexdigest(), "writes": writes, "seen": fam.seen,
              "wrapper": wrapper, "syncs": syncs}
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / f"rank{rank}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
