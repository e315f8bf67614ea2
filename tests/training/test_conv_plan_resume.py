"""A resumed run computes its convolutions by the methods its first part did: the measured
convolution plans (:mod:`limner.nn.conv_plan`) travel in the checkpoint and are pinned on resume,
ahead of whatever the machine's plan file now says. Through the CLI, in new processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from limner.nn import conv_plan, kernels
from limner.training.checkpoint import load_checkpoint_state

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"compiled kernels unavailable: {kernels.status()}")

STEPS, STOP = 8, 5


def _train(cli, data: Path, out: Path, steps: int, kernel_dir: Path, monkeypatch, *extra: str) -> None:
    monkeypatch.setenv("LIMNER_CONV_TUNE", "1")
    monkeypatch.setenv("LIMNER_KERNEL_DIR", str(kernel_dir))
    cli("train", str(data), "--family", "diffusion", "--out", str(out), "--preset", "tiny", "--resolution", "16",
        "--steps", str(steps), "--batch-size", "4", "--save-every", "5", "--sample-every", "100", "--seed", "3",
        "--no-progress", *extra, cache=out.parent / "cache")


def _weights(run: Path) -> dict[str, np.ndarray]:
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    return {f"{f.stem}.{k}": v for f in sorted(ckpt.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_resume_uses_the_checkpoints_plans_not_the_machines_new_ones(tiny_data, cli, tmp_path, monkeypatch,
                                                                     kernel_copy):
    machine = kernel_copy(tmp_path / "kernels-a")
    _train(cli, tiny_data, tmp_path / "straight", STEPS, machine, monkeypatch)
    _train(cli, tiny_data, tmp_path / "run", STOP, machine, monkeypatch)
    ckpt = tmp_path / "run" / "checkpoints" / (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    (saved,) = load_checkpoint_state(ckpt)["conv_plans"]  # one rank
    train_keys = [key for key in saved if key.startswith("train ")]
    assert train_keys and any(method != conv_plan.ONEDNN for key in train_keys for method in saved[key].values())
    # The machine's plans change meanwhile (a cleared cache timed again, a busy machine): here every
    # part of every shape on oneDNN, which rounds differently from the Winograd kernels.
    other = kernel_copy(tmp_path / "kernels-b")
    plan_file = json.loads(next(machine.glob("conv-plan-*.json")).read_text())
    plan_file["plans"] = {key: {part: conv_plan.ONEDNN for part in conv_plan.PARTS} for key in saved}
    changed = other / next(machine.glob("conv-plan-*.json")).name
    changed.write_text(json.dumps(plan_file))
    _train(cli, tiny_data, tmp_path / "run", STEPS, other, monkeypatch, "--resume")
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "run")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert np.array_equal(straight[key], resumed[key]), f"{key} differs after resume"
    ckpt = tmp_path / "run" / "checkpoints" / (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert load_checkpoint_state(ckpt)["conv_plans"] == [saved]  # the pinned plans, saved again
