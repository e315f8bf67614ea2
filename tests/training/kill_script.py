"""Writes checkpoints in a loop until killed (the SIGKILL-during-save fault test).

Usage: kill_script.py RUN_DIR
"""

from __future__ import annotations

import sys

import torch

from limner.training.checkpoint import write_checkpoint


def main() -> int:
    run_dir = sys.argv[1]
    torch.set_num_threads(1)
    weights = {"model": {"w": torch.randn(512, 1024)}}  # 2 MB: the kill lands mid-write often
    step = 0
    while True:
        step += 1
        weights["model"]["w"].add_(1.0)
        write_checkpoint(run_dir, step, weights, {"step": step}, keep_last=2)


if __name__ == "__main__":
    raise SystemExit(main())
