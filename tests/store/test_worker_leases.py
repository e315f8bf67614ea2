"""The worker against the queue on both databases: a lost lease stops the job without writing
anything for it (no image, no final state: another worker may own it), a cancel request stops
it and records it as cancelled, and a job moved to another owner stores its images for them.

The executor is a stand-in ("steps" jobs) that waits for the test between two progress reports,
so the test can cancel the job or take its lease away at a known point; the images it stores go
through the worker's real image path (file, then row)."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from limner.jobs import executors
from limner.jobs.executors import JobCancelled
from limner.jobs.worker import PROGRESS_WRITE_INTERVAL, Worker

from .conftest import make_record

KIND = "steps"


@pytest.fixture
def alice(store):
    return store.create_user("alice", None)


def generated(seed: int):
    """A ``GeneratedImage`` look-alike: what ``RunningJob.save_image`` stores."""
    from PIL import Image

    from limner.generation.request import GenerationRecord

    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return SimpleNamespace(image=Image.fromarray(pixels), record=GenerationRecord.from_dict(make_record("x", seed)))


class Stepper:
    """The "steps" executor: reports step 1, waits for ``go``, reports step 2 (a heartbeat),
    then, like ``generate`` after its last sampler step, stores an image; with
    ``check`` it first stops when asked to, as the sampler callback does at every step."""

    def __init__(self, check: bool) -> None:
        self.check = check
        self.reached = threading.Event()
        self.go = threading.Event()
        self.outcome: str | None = None

    def __call__(self, payload, ctx):
        try:
            ctx.progress(1, 2)
            self.reached.set()
            assert self.go.wait(30), "the test never let the job go on"
            time.sleep(PROGRESS_WRITE_INTERVAL + 0.05)  # the next progress report beats
            ctx.progress(2, 2)
            if self.check and ctx.cancel_requested():
                raise JobCancelled()
            summary = ctx.save_image(generated(payload["seed"]), None)
        except BaseException as exc:
            self.outcome = type(exc).__name__
            raise
        self.outcome = "returned"
        return {"image_ids": [summary["id"]]}


def start(store, home, stepper: Stepper, monkeypatch) -> tuple[Worker, threading.Thread]:
    monkeypatch.setitem(executors.EXECUTORS, KIND, stepper)
    worker = Worker(store, home, kinds=(KIND,), lease_s=30, name="w1")
    thread = threading.Thread(target=worker.run_once, daemon=True)
    thread.start()
    assert stepper.reached.wait(30), "the worker did not start the job"
    return worker, thread


def _steal(store, job_id: str) -> object:
    """Take the job's lease away as a dead worker's is: expire it, re-queue, claim as "w2".
    The running worker may beat in between (extending the lease): then try again."""
    from limner.store.tables import jobs

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with store.engine.begin() as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(lease_expires=0.0))
        if store.requeue_expired() == [job_id]:
            lease = store.claim_job("w2", [KIND], lease_s=30)
            assert lease is not None and lease.job.id == job_id
            return lease
    raise AssertionError("could not take the lease away")


def count_images(store, user) -> int:
    return len(store.search(user, mode="text", limit=200).items)


def test_a_lost_lease_stops_the_job_without_writing_anything(store, home, alice, monkeypatch, caplog):
    job, _ = store.submit_job(alice, KIND, {"seed": 1})
    stepper = Stepper(check=False)
    worker, thread = start(store, home, stepper, monkeypatch)
    thief = _steal(store, job.id)
    with caplog.at_level(logging.WARNING, logger="limner.jobs.worker"):
        stepper.go.set()
        thread.join(30)
    assert not thread.is_alive()
    assert stepper.outcome == "LeaseLost"  # told at its next beat; the image was refused
    assert count_images(store, alice) == 0 and not list((home / "images").rglob("*.png"))
    row = store.get_job(alice, job.id)
    assert (row.state, row.lease_owner, row.result, row.error) == ("running", "w2", None, None)
    assert row.progress is None  # nothing of the old run's progress either
    assert worker.completed == 0
    assert any("lease lost" in r.getMessage() and job.id in r.getMessage() for r in caplog.records)
    # the new holder is not disturbed: it beats and completes
    assert store.heartbeat(thief)
    assert store.complete_job(thief, {"by": "w2"})
    assert store.get_job(alice, job.id).result == {"by": "w2"}


def test_a_cancel_request_stops_the_job_and_records_it(store, home, alice, monkeypatch):
    job, _ = store.submit_job(alice, KIND, {"seed": 2})
    stepper = Stepper(check=True)
    worker, thread = start(store, home, stepper, monkeypatch)
    assert store.cancel_job(alice, job.id).cancel_requested
    stepper.go.set()
    thread.join(30)
    assert not thread.is_alive() and stepper.outcome == "JobCancelled"
    row = store.get_job(alice, job.id)
    assert (row.state, row.error, row.result) == ("cancelled", "cancelled", None)
    assert row.progress == {"step": 2, "total": 2}  # its last beat still counted
    assert count_images(store, alice) == 0 and worker.completed == 0


def test_an_uninterrupted_job_completes_with_its_image(store, home, alice, monkeypatch):
    job, _ = store.submit_job(alice, KIND, {"seed": 3})
    stepper = Stepper(check=True)
    worker, thread = start(store, home, stepper, monkeypatch)
    stepper.go.set()
    thread.join(30)
    row = store.get_job(alice, job.id)
    assert row.state == "done" and stepper.outcome == "returned" and worker.completed == 1
    assert [i.id for i in store.search(alice, mode="text").items] == row.result["image_ids"]


def test_images_of_a_job_whose_owner_changed_go_to_the_new_owner(store, home, monkeypatch):
    """Turning accounts on moves the local user's jobs to the first admin, also a job that is
    running at that moment: its images are stored for the admin, not for "local"."""
    local = store.ensure_local_user()
    job, _ = store.submit_job(local, KIND, {"seed": 4})
    stepper = Stepper(check=True)
    worker, thread = start(store, home, stepper, monkeypatch)
    admin = store.create_user("alice", "correct horse battery", "admin")
    stepper.go.set()
    thread.join(30)
    row = store.get_job(admin, job.id)
    assert row.state == "done" and row.owner_id == admin.id
    image = store.get_image(admin, row.result["image_ids"][0])
    assert image.owner_id == admin.id
