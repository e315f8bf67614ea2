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


@pytest.mark.slow
def test_a_stopped_workers_training_job_resumes_on_its_next_claim(studio_factory, tiny_data):
    """Stopping a worker saves and re-queues its training job; the next claim (attempt 2) resumes
    from that checkpoint instead of refusing the run folder its first attempt made."""
    import threading

    from limner.jobs.worker import Worker
    from limner.runs import checkpoint_dirs

    s = studio_factory(workers=0)
    uid = local_id(s)
    shutil.copytree(tiny_data, s.home / "datasets" / f"u{uid}" / "emoji")
    c = s.client()
    job = c.train(data="emoji", name="again", preset="tiny", resolution=16, steps=30, batch_size=4,
                  set={"train.save_every": 100_000, "train.sample_every": 0, "train.log_every": 1})
    first = Worker(s.store, s.home)
    thread = threading.Thread(target=first.run_once, daemon=True)
    thread.start()
    wait_until(lambda: (c.job(job["id"])["progress"] or {}).get("step", 0) >= 2, timeout=120)
    first.stopping.set()
    thread.join(180)  # the stop saves a checkpoint (and its explain capture) first
    assert not thread.is_alive() and c.job(job["id"])["state"] == "queued"
    run_dir = s.home / "runs" / f"u{uid}" / "again"
    [stopped] = checkpoint_dirs(run_dir)
    assert Worker(s.store, s.home).run_once()
    done = c.job(job["id"])
    assert done["state"] == "done" and done["attempts"] == 2 and done["result"] == {"run": "again", "step": 30}, done
    assert [p.name for p in checkpoint_dirs(run_dir)] == [stopped.name, "step_000030"]


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


@pytest.fixture
def eval_cache(tiny_run, tiny_data, tmp_path, monkeypatch):
    """A cache folder holding the tiny data's default (CLIP-style) extractor, trained briefly,
    as an earlier ``limner eval`` of this data would have left it; LIMNER_CACHE_DIR points at it."""
    import json

    from limner.data.dataset import load_dataset
    from limner.evaluation.evaluate import default_extractor_dir
    from limner.evaluation.trained import default_kind, train_extractor

    cache = tmp_path / "cache"
    monkeypatch.setenv("LIMNER_CACHE_DIR", str(cache))
    data_cfg = json.loads((tiny_run / "config.json").read_text())["data"]
    dataset = load_dataset(tiny_data, data_cfg["resolution"], channels=data_cfg["channels"], cache_dir=cache,
                           progress=False)
    kind = default_kind(dataset)
    train_extractor(dataset, default_extractor_dir(dataset, kind, cache), kind=kind, steps=10, batch_size=8,
                    progress=False)
    return cache


def test_eval_job_scores_a_run_like_limner_eval(studio_factory, tiny_run, tiny_data, eval_cache, tmp_path):
    """An eval job submitted through limner.client runs on the worker, stores its result (the
    metrics in the job, result.json and report.png in the user's evals folder) and matches what
    the library call behind ``limner eval`` gives for the same options."""
    import json
    import math

    from limner.evaluation.evaluate import EvalOptions, EvalTarget, evaluate_run

    s = studio_factory(workers=1)
    uid = local_id(s)
    install_run(s.home, uid, tiny_run)
    c = s.client()
    job = c.evaluate("tiny", num=10)
    assert job["kind"] == "eval" and job["run"] == "tiny"
    done = wait_job(c, job["id"], timeout=300)
    assert done["state"] == "done", done["error"]
    result = done["result"]
    out = s.home / "evals" / f"u{uid}" / "tiny"
    assert result["run"] == "tiny" and result["result"] == str(out / "result.json")
    assert (out / "report.png").is_file()
    stored = json.loads((out / "result.json").read_text())
    metrics = result["metrics"]
    assert set(metrics) == set(stored["metrics"]) and {"fid", "kid"} <= set(metrics)
    assert isinstance(metrics["fid"], float) and len(_numbers(metrics)) >= 4
    assert all(math.isfinite(v) for v in _numbers(metrics))
    assert stored["source"]["sampling"]["num"] == 10
    assert c.job(job["id"])["result"] == result  # kept in the store, returned by GET too
    # the same library call as `limner eval` (same options) gives the same numbers
    direct = evaluate_run(tiny_run, EvalTarget(data=tiny_data, out=tmp_path / "direct", progress=False),
                          EvalOptions(num=10, batch_size=10, kid_subset_size=10))
    assert _numbers(direct.result["metrics"]) == pytest.approx(_numbers(metrics), rel=1e-5, abs=1e-6)


def _numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [x for k in sorted(tree) for x in _numbers(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [x for v in tree for x in _numbers(v)]
    return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_eval_options_are_checked_before_a_job_is_queued(idle):
    c = idle.client()
    for body, field in (({"run": "tiny", "num": 5}, "num"), ({"run": "tiny", "num": 10**6}, "num"),
                        ({"run": "../tiny", "num": 10}, "run"), ({"run": "tiny", "steps": 4}, "steps"),
                        ({"num": 10}, "run")):
        with pytest.raises(StudioError) as e:
            c.request("POST", "/api/eval", json_body=body)
        assert (e.value.status, e.value.field) == (422, field), body
    with pytest.raises(StudioError) as e:
        c.evaluate("no-such-run", num=10)
    assert e.value.status == 404 and "no-such-run" in e.value.detail
    assert c.jobs() == []  # nothing was queued


def test_training_callback_tells_a_lost_lease_from_a_cancel():
    """Cancel: ask the trainer to stop (it saves a checkpoint first). Lost lease: stop at once,
    saving nothing (another worker may be writing the run now)."""
    from types import SimpleNamespace

    from limner.jobs.executors import LeaseLost, _train_callback

    class Ctx:
        job_id, owner_id, device = "j", 1, "cpu"

        def __init__(self, cancel: bool, lost: bool) -> None:
            self.cancel, self.lost, self.reports = cancel, lost, []

        def progress(self, step, total, loss=None):
            self.reports.append((step, total, loss))

        def emit(self, event):
            pass

        def cancel_requested(self):
            return self.cancel or self.lost

        def lease_lost(self):
            return self.lost

    stops = []
    trainer = SimpleNamespace(request_stop=lambda: stops.append(True))
    _train_callback(Ctx(cancel=False, lost=False), "run", 10).on_step_end(trainer, 1, {"loss": 0.5})
    assert stops == []
    cancelled = Ctx(cancel=True, lost=False)
    _train_callback(cancelled, "run", 10).on_step_end(trainer, 2, {"loss": 0.4})
    assert stops == [True] and cancelled.reports == [(2, 10, 0.4)]
    with pytest.raises(LeaseLost):
        _train_callback(Ctx(cancel=False, lost=True), "run", 10).on_step_end(trainer, 3, {"loss": 0.3})
    assert stops == [True]  # no stop request, so no checkpoint
