"""Resume == continue, bitwise, on CPU (RELIABILITY.md C.34-C.36, C.38, C.49).

N steps straight vs k steps, stop, a NEW PROCESS resumes to N: weights, EMA weights and counter,
optimizer state, LR schedule, every RNG (the step generator included) and the data position
are identical, and every sample index is seen exactly as often as without the interruption.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from limner.training import Callback, TrainingInterrupted

from .toy_family import ToyFamily, ToyGAN, assert_same, checkpoint_contents, make_trainer, toy_data

SCRIPT = Path(__file__).with_name("resume_script.py")
N = 12


def _family(kind: str):
    return ToyFamily() if kind == "toy" else ToyGAN()


class StopAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            trainer.request_stop()


def _resume_in_new_process(run_dir: Path, kind: str, n_images: int, accum: int) -> list[int]:
    seen = run_dir / "seen.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(run_dir), str(N), kind, str(n_images), str(accum), str(seen)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(seen.read_text())


@pytest.mark.parametrize(
    "kind, k, n_images, accum, how",
    [
        ("toy", 4, 20, 1, "interrupt"),   # mid-epoch, a batch straddling two epochs
        ("toy", 6, 24, 1, "steps"),       # exactly at an epoch boundary (3 steps per epoch)
        ("toy", 5, 24, 2, "interrupt"),   # with gradient accumulation
        ("gan", 5, 20, 2, "steps"),       # two optimizers, EMA on G only
    ],
)
def test_resume_in_a_new_process_is_bitwise_identical(tmp_path, kind, k, n_images, accum, how):
    straight_fam = _family(kind)
    make_trainer(tmp_path / "straight", straight_fam, toy_data(n_images), steps=N,
                 grad_accum=accum, save_every=100).fit()

    first_fam = _family(kind)
    if how == "interrupt":
        trainer = make_trainer(tmp_path / "run", first_fam, toy_data(n_images), steps=N,
                               grad_accum=accum, save_every=100, callbacks=[StopAt(k)])
        with pytest.raises(TrainingInterrupted):
            trainer.fit()
    else:
        make_trainer(tmp_path / "run", first_fam, toy_data(n_images), steps=k,
                     grad_accum=accum, save_every=100).fit()
    seen_after = _resume_in_new_process(tmp_path / "run", kind, n_images, accum)

    final = f"checkpoints/step_{N:06d}"
    assert_same(checkpoint_contents(tmp_path / "run" / final),
                checkpoint_contents(tmp_path / "straight" / final))
    if kind == "toy":  # sample accounting: same indices in the same order, nothing lost or doubled
        assert first_fam.seen + seen_after == straight_fam.seen


@given(k=st.integers(1, 9), accum=st.sampled_from([1, 2]), hflip=st.booleans())
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_resume_property_in_process(tmp_path_factory, k, accum, hflip):
    base = tmp_path_factory.mktemp("prop")
    opts = dict(grad_accum=accum, hflip=hflip, save_every=100, log_every=1)
    straight = ToyFamily()
    make_trainer(base / "s", straight, steps=10, **opts).fit()
    first = ToyFamily()
    make_trainer(base / "r", first, steps=k, **opts).fit()
    second = ToyFamily(seed=99)  # a different init: everything must come from the checkpoint
    resumed = make_trainer(base / "r", second, steps=10, resume=True, **opts)
    assert resumed.step == k
    resumed.fit()
    assert_same(checkpoint_contents(base / "r/checkpoints/step_000010"),
                checkpoint_contents(base / "s/checkpoints/step_000010"))
    assert first.seen + second.seen == straight.seen
    rows = [json.loads(x) for x in (base / "r/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11))  # logger step continues, no double count
    lr_s = [json.loads(x)["lr"] for x in (base / "s/metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == lr_s


def test_epoch_accounting_multiset(tmp_path):
    """Across an interrupted epoch, each image appears once per epoch (no gaps, no repeats)."""
    first, second = ToyFamily(), ToyFamily()
    make_trainer(tmp_path, first, toy_data(20), steps=3, batch_size=4, save_every=100).fit()
    make_trainer(tmp_path, second, toy_data(20), steps=10, batch_size=4, save_every=100,
                 resume=True).fit()
    stream = first.seen + second.seen
    assert sorted(stream[:20]) == list(range(20)) and sorted(stream[20:40]) == list(range(20))
