"""Subprocess half of the resume tests: resume a toy run in a fresh process and train to N.

Usage: python resume_script.py RUN_DIR STEPS FAMILY N_IMAGES GRAD_ACCUM SEEN_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from toy_family import ToyFamily, ToyGAN, make_trainer, toy_data  # noqa: E402


def main() -> int:
    run_dir, steps, family, n_images, accum, seen_json = sys.argv[1:7]
    torch.set_num_threads(1)
    fam = ToyFamily() if family == "toy" else ToyGAN()
    trainer = make_trainer(run_dir, fam, toy_data(int(n_images)), resume=True, steps=int(steps),
                           grad_accum=int(accum), save_every=100)
    trainer.fit()
    Path(seen_json).write_text(json.dumps(getattr(fam, "seen", [])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
