"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

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
