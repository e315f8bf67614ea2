"""Capturing and restoring every random number generator a training step may touch.

Python ``random``, NumPy's global RNG, torch's CPU and CUDA default generators, and the
trainer's step generator, as plain tensors and ints so the state loads with
``weights_only=True`` (accelerate's ``save_state`` saves the same set).
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """The per-rank generator families draw their step randomness from."""
    mixed = int(np.random.SeedSequence([seed, rank, 0x6C696D]).generate_state(1, np.uint64)[0])
    gen = torch.Generator(device=device)
    gen.manual_seed(mixed)
    return gen


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """All RNG states of this process as plain tensors/ints."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["step_generator"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what ``capture_rng`` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "step_generator" in state:
        generator.set_state(state["step_generator"])


@contextmanager
def preserved_rng(generator: torch.Generator | None = None) -> Iterator[None]:
    """Run a block (e.g. sampling) without disturbing any RNG the training step uses."""
    saved = capture_rng(generator)
    try:
        yield
    finally:
        restore_rng(saved, generator)
