"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Measured convolution plans (limner.nn.conv_plan) choose by timing, so a loaded machine could
# change which method computes a layer and with it the rounding some tests compare. The suite
# keeps the fixed rule; tests/models/test_conv_plan.py tests the plans. `LIMNER_CONV_TUNE=1
# scripts/test.sh` runs the rest with this machine's plans too; the tests of the fixed rule itself
# ask for it (the fixed_rule fixture).
os.environ.setdefault("LIMNER_CONV_TUNE", "0")


@pytest.fixture(scope="session")
def kernel_copy():
    """``kernel_copy(folder)``: ``folder`` (created) holding this machine's compiled kernel build
    and its tuning record, but no convolution plans: for LIMNER_KERNEL_DIR in tests of the plans.
    (Without the compiled kernels it stays empty.)"""
    import shutil

    from limner.nn import kernels

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True)
        if kernels.available():
            built = kernels._kernel_dir()
            shutil.copy(built / f"{kernels.build_id()}.so", folder)
            for tuning in built.glob("tuning-*.json"):
                shutil.copy(tuning, folder)
        return folder

    return make


@pytest.fixture
def fixed_rule():
    """The fixed Winograd rule in this process and in the processes it starts, whatever
    LIMNER_CONV_TUNE says: for tests of that rule and of what it records."""
    from limner.nn import conv_plan

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conv_plan, "TUNE", False)
        mp.setenv("LIMNER_CONV_TUNE", "0")
        yield

# CI clones the repository somewhere else with ../shared beside it, so resolve from the repo root.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real datasets); skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker gets one core; letting every worker start a full-size
    # intra-op thread pool on a 2-core machine only makes them fight.
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def noise_images():
    """``noise_images(folder, seed)``: ``folder`` (created) with 4 seeded random 16 px RGB PNGs,
    a dataset for tests that need a run, not a picture."""
    import numpy as np
    from PIL import Image

    def make(folder: Path, seed: int, count: int = 4, size: int = 16) -> Path:
        folder.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
        return folder

    return make


REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "data" / "emoji-demo"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """12 captioned emoji copied from the bundled demo subset (imagefolder layout)."""
    import json
    import shutil

    root = tmp_path_factory.mktemp("tiny-data")
    (root / "images").mkdir()
    lines = (DEMO_DATA / "metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines][::18][:12]
    with open(root / "metadata.jsonl", "w") as f:
        for row in rows:
            shutil.copy(DEMO_DATA / row["file_name"], root / row["file_name"])
            f.write(json.dumps({"file_name": row["file_name"], "text": row["text"]}) + "\n")
    return root


@pytest.fixture(scope="session")
def cli():
    """Run ``python -m limner ARGS`` in a new process (as a user would); fails loudly."""
    import os
    import subprocess
    import sys

    def run(*args: str, cache: Path, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "LIMNER_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "limner", *args], capture_output=True,
                              text=True, env=env, timeout=300)
        if check:
            assert proc.returncode == 0, f"limner {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    return run
