"""The job queue through the API: bounded (429 + Retry-After), idempotent submits, idempotent
cancel (queued and running, training saves first), a failing job fails alone with its reason,
a dead worker's job is re-queued after its lease and completes once, jobs survive a restart."""

from __future__ import annotations

import shutil
import time

import pytest

from limner.client import StudioError
from tests.server.conftest import install_run, wait_job, wait_until


def local_id(studio) -> int:
    return studio.store.ensure_local_user().id


@pytest.fixture
def idle(studio_factory, tiny_run):
    """A studio with no worker: jobs stay queued."""
    s = studio_factory(workers=0, queue_limit=3)
    install_run(s.home, local_id(s), tiny_run)
    return s


def test_queue_limit_answers_429_with_retry_after(idle):
    c = idle.client()
    for i in range(3):
        c.generate(model="tiny", prompt=f"p{i}", steps=2)
    r = idle.http.post("/api/generate", json={"model": "tiny", "prompt": "one too many"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["detail"].startswith("the queue is full")


def test_idempotency_key_returns_the_same_job(idle):
    c = idle.client()
    first = c.generate(model="tiny", prompt="same", steps=2, idempotency_key="k-1")
    again = c.generate(model="tiny", prompt="same", steps=2, idempotency_key="k-1")
    assert again["id"] == first["id"] and len(c.jobs()) == 1
    with pytest.raises(StudioError) as e:  # the same key with another request is an error
        c.generate(model="tiny", prompt="different", steps=2, idempotency_key="k-1")
    assert e.value.status == 422


def test_cancel_is_idempotent_and_jobs_survive_a_restart(studio_factory, tiny_run, tmp_path):
    home = tmp_path / "home"
    s = studio_factory(workers=0, home=home)
    install_run(s.home, local_id(s), tiny_run)
    c = s.client()
    kept = c.generate(model="tiny", prompt="kept", steps=2, seed=1)
    dropped = c.generate(model="tiny", prompt="dropped", steps=2, seed=2)
    assert c.cancel(dropped["id"])["state"] == "cancelled"
    assert c.cancel(dropped["id"])["state"] == "cancelled"
    s.close()
    again = studio_factory(workers=1, home=home)  # a new process on the same home
    c2 = again.client()
    assert wait_job(c2, kept["id"])["state"] == "done"
    assert c2.job(dropped["id"])["state"] == "cancelled"
    assert c2.cancel(kept["id"])["state"] == "done"  # cancelling a finished job changes nothing


def test_running_job_cancels_at_its_next_step(studio_factory, tiny_run):
    s = studio_factory(workers=1)
    install_run(s.home, local_id(s), tiny_run)
    c = s.client()
    job = c.generate(model="tiny", prompt="long", steps=1000, num=16, seed=1)
    wait_until(lambda: c.job(job["id"])["progress"]["step"] > 0, timeout=60)
    c.cancel(job["id"])
    done = wait_job(c, job["id"], timeout=30)
    assert done["state"] == "cancelled" and done["result"] == {}
    assert c.images()["items"] == []
    assert wait_job(c, c.generate(model="tiny", prompt="next", steps=2)["id"])["state"] == "done"


def test_a_failing_job_fails_alone_with_its_reason(studio_factory, tiny_run, monkeypatch):
    import limner.jobs.worker as worker_module

    s = studio_factory(workers=1)
    uid = local_id(s)
    install_run(s.home, uid, tiny_run)
    broken = install_run(s.home, uid, tiny_run, name="broken")
    shutil.rmtree(broken / "checkpoints")
    (broken / "checkpoints").mkdir()
    real = worker_module.run_generate

    def flaky(payload, ctx, runs):
        if payload["request"]["prompt"] == "oom":
            raise MemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(payload, ctx, runs)

    monkeypatch.setattr(worker_module, "run_generate", flaky)
    c = s.client()
    bad = c.generate(model="broken", prompt="x", steps=2)
    oom = c.generate(model="tiny", prompt="oom", steps=2)
    good = c.generate(model="tiny", prompt="fine", steps=2)
    assert wait_job(c, good["id"])["state"] == "done"
    failed = wait_job(c, bad["id"])
    assert failed["state"] == "failed" and "no valid checkpoint" in failed["error"]
    oomed = wait_job(c, oom["id"])
    assert oomed["state"] == "failed" and oomed["error"].startswith("out of memory")


def test_dead_workers_job_is_requeued_and_completed_once(studio_factory, tiny_run):
    s = studio_factory(workers=0)
    install_run(s.home, local_id(s), tiny_run)
    c = s.client()
    job = c.generate(model="tiny", prompt="orphan", steps=2, seed=7)
    dead = s.store.claim_job("dead-worker", ["generate"], lease_s=0.3)  # claims, then never beats
    assert dead is not None and dead.job.id == job["id"]
    time.sleep(0.4)
    from limner.jobs.worker import Worker

    worker = Worker(s.store, s.home, lease_s=1.5)
    assert worker.run_once()  # re-queues the expired job and runs it
    done = c.job(job["id"])
    assert done["state"] == "done" and done["attempts"] == 2
    assert s.store.complete_job(dead, {"image_ids": []}) is False  # the dead lease cannot finish it
    assert c.job(job["id"])["result"] == done["result"]


def test_training_job_stops_with_a_checkpoint(studio_factory, tiny_data):
    s = studio_factory(workers=1)
    uid = local_id(s)
    data = s.home / "datasets" / f"u{uid}" / "emoji"
    shutil.copytree(tiny_data, data)
    c = s.client()
    job = c.train(data="emoji", name="long", preset="tiny", resolution=16, steps=100_000, batch_size=4,
                  set={"train.save_every": 100_000, "train.sample_every": 0})
    wait_until(lambda: c.job(job["id"])["progress"]["step"] >= 2, timeout=120)
    progress = c.job(job["id"])["progress"]
    assert progress["total"] == 100_000 and progress["loss"] > 0
    c.cancel(job["id"])
    done = wait_job(c, job["id"], timeout=60)
    assert done["state"] == "cancelled"
    run = c.run("long")
    assert run["checkpoints"] and run["checkpoints"][-1] >= 2  # stop = save first


def test_events_of_a_worker_in_another_process_reach_the_socket(studio_factory, tiny_run):
    """A worker without this studio's event hub (as `limner worker` is) still reaches the
    owner's socket: state, progress, the preview and the image come through the store relay."""
    import threading

    from limner.jobs.worker import Worker

    s = studio_factory(workers=0)
    install_run(s.home, local_id(s), tiny_run)
    c = s.client()
    remote = Worker(s.store, s.home, hub=None)
    with s.http.websocket_connect("/api/events") as ws:
        job = c.generate(model="tiny", prompt="far away", steps=3, seed=11)
        threading.Thread(target=remote.run_once, daemon=True).start()
        kinds = []
        while True:
            msg = ws.receive_json()
            kinds.append(msg["type"])
            if msg["type"] == "job" and msg["job"]["state"] == "done":
                break
    assert "image" in kinds and kinds.index("image") < len(kinds) - 1
    assert c.job(job["id"])["state"] == "done"
