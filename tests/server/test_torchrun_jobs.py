"""Training jobs on a worker with ``nproc_per_node=2``: ``limner train`` under torchrun (gloo on
this CPU machine) through the queue. A worker stopping mid-run re-queues the job after the ranks
saved, and the next claim resumes from that checkpoint to the end (world size 2 in the
checkpoints); a cancel leaves a checkpoint and the state cancelled; a lost lease kills every
process and writes nothing more; a failing child fails the job with its standard error. No
process of the job outlives it."""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import pytest
import torch.distributed as dist

from limner.jobs.worker import Worker
from limner.runs import checkpoint_dirs, read_metrics
from limner.store.models import Beat
from tests.server.conftest import wait_job, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
]

QUIET = {"train.sample_every": 0, "train.log_every": 1, "train.save_every": 100_000}


def _alive_with(text: str) -> list[int]:
    """Live processes whose command line mentions ``text`` (the run folder): found without the
    marker the worker kills by, so a tree it failed to mark shows up too."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            out.append(int(entry.name))
    return out


def _none_left(run_dir: Path) -> None:
    wait_until(lambda: not _alive_with(str(run_dir)), timeout=10)


@pytest.fixture
def training(studio_factory, tiny_data):
    """A studio without an embedded worker, the tiny data uploaded as 'emoji', and a submit."""
    s = studio_factory(workers=0)
    uid = s.store.ensure_local_user().id
    shutil.copytree(tiny_data, s.home / "datasets" / f"u{uid}" / "emoji")
    c = s.client()

    def submit(name: str, steps: int, batch_size: int = 4) -> tuple[dict, Path]:
        job = c.train(data="emoji", name=name, preset="tiny", resolution=16, steps=steps, batch_size=batch_size,
                      set=QUIET)
        return job, s.home / "runs" / f"u{uid}" / name

    return s, c, submit


def _start(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run_once, daemon=True)
    thread.start()
    return thread


def _running_at(c, job_id: str, run_dir: Path, step: int) -> None:
    wait_until(lambda: (c.job(job_id)["progress"] or {}).get("step", 0) >= step, timeout=150)
    assert len(_alive_with(str(run_dir))) >= 3  # the agent and two ranks


def test_stopped_worker_requeues_and_the_next_claim_resumes_to_the_end(training):
    from limner.training.checkpoint import load_checkpoint_state

    s, c, submit = training
    job, run_dir = submit("ddp", steps=40)
    first = Worker(s.store, s.home, nproc_per_node=2)
    thread = _start(first)
    _running_at(c, job["id"], run_dir, 2)
    progress = c.job(job["id"])["progress"]
    assert progress["total"] == 40 and progress["loss"] > 0  # from metrics.jsonl: the loss curve moves
    first.stopping.set()
    thread.join(120)
    assert not thread.is_alive()
    _none_left(run_dir)
    queued = c.job(job["id"])
    assert queued["state"] == "queued" and queued["attempts"] == 1
    [stopped] = checkpoint_dirs(run_dir)  # the ranks saved on SIGINT
    k = int(stopped.name.split("_")[1])
    assert 2 <= k < 40

    assert Worker(s.store, s.home, nproc_per_node=2).run_once()
    done = c.job(job["id"])
    assert done["state"] == "done" and done["attempts"] == 2, done
    assert done["result"] == {"run": "ddp", "step": 40}
    assert done["progress"]["step"] == 40 and done["progress"]["loss"] > 0
    assert [p.name for p in checkpoint_dirs(run_dir)] == [stopped.name, "step_000040"]  # resumed, not redone
    assert [load_checkpoint_state(p)["world_size"] for p in checkpoint_dirs(run_dir)] == [2, 2]
    steps = [row["step"] for row in read_metrics(run_dir)]
    assert steps[-(40 - k):] == list(range(k + 1, 41))
    assert c.run("ddp")["checkpoints"][-1] == 40
    _none_left(run_dir)


def test_cancel_saves_a_checkpoint_and_cancels(training):
    s, c, submit = training
    job, run_dir = submit("cancelled", steps=100_000)
    worker = Worker(s.store, s.home, nproc_per_node=2)
    thread = _start(worker)
    _running_at(c, job["id"], run_dir, 2)
    c.cancel(job["id"])
    done = wait_job(c, job["id"], timeout=120)
    thread.join(30)
    assert done["state"] == "cancelled", done
    [saved] = checkpoint_dirs(run_dir)
    assert int(saved.name.split("_")[1]) >= 2
    _none_left(run_dir)


class _LeaseThief:
    """The store, except that once ``steal`` is set every heartbeat finds the lease lost (as
    when the job was queued again and claimed by another worker)."""

    def __init__(self, store) -> None:
        self._store = store
        self.steal = threading.Event()

    def __getattr__(self, name):
        return getattr(self._store, name)

    def heartbeat(self, lease, **kwargs):
        if self.steal.is_set():
            return Beat.LEASE_LOST
        return self._store.heartbeat(lease, **kwargs)


def test_a_lost_lease_kills_the_group_and_writes_nothing(training):
    s, c, submit = training
    job, run_dir = submit("stolen", steps=100_000)
    store = _LeaseThief(s.store)
    worker = Worker(store, s.home, nproc_per_node=2)
    thread = _start(worker)
    _running_at(c, job["id"], run_dir, 2)
    store.steal.set()
    thread.join(60)
    assert not thread.is_alive()
    _none_left(run_dir)
    after = c.job(job["id"])
    assert after["state"] == "running" and after["error"] is None and not after["result"]  # left alone
    assert checkpoint_dirs(run_dir) == [] and not list(run_dir.glob("checkpoints/.tmp-*"))
    rows = len(read_metrics(run_dir))
    assert rows >= 2
    import time

    time.sleep(2)  # nothing of the job is still writing
    assert len(read_metrics(run_dir)) == rows and checkpoint_dirs(run_dir) == []


def test_a_failing_child_fails_the_job_with_its_stderr(training):
    s, c, submit = training
    job, run_dir = submit("odd", steps=10, batch_size=3)  # 3 images do not split over 2 ranks
    assert Worker(s.store, s.home, nproc_per_node=2).run_once()
    failed = c.job(job["id"])
    assert failed["state"] == "failed", failed
    assert failed["error"] == ("limner train (2 processes under torchrun) exited with code 1: limner train: error: "
                               "train.batch_size (3) must be divisible by grad_accum (1) x world size (2) = 2")
    _none_left(run_dir)
