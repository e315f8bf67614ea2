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
