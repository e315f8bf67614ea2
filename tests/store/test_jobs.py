"""The job queue: submit limits, idempotency, leases, exactly-once completion, cancel."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from limner.errors import UsageError
from limner.store import Beat, IdempotencyMismatch, NotFound, QueueFull


@pytest.fixture
def alice(store):
    return store.create_user("alice", None)


@pytest.fixture
def bob(store):
    return store.create_user("bob", None)


def test_submit_claim_complete(store, alice):
    job, created = store.submit_job(alice, "generate", {"prompt": "cat", "num": 2})
    assert created and job.state == "queued" and str(uuid.UUID(job.id)) == job.id
    lease = store.claim_job("w1", ["generate"], lease_s=30)
    assert lease.job.id == job.id and lease.job.state == "running" and lease.job.attempts == 1
    assert store.claim_job("w2", ["generate"]) is None  # nothing else queued
    assert store.heartbeat(lease, progress={"step": 3, "total": 8}) is Beat.OK
    assert store.get_job(alice, job.id).progress == {"step": 3, "total": 8}
    assert store.complete_job(lease, {"image_ids": [1, 2]})
    done = store.get_job(alice, job.id)
    assert done.state == "done" and done.result == {"image_ids": [1, 2]} and done.finished >= done.started
    assert not store.complete_job(lease, {"image_ids": [3]})  # a second completion changes nothing
    assert store.get_job(alice, job.id).result == {"image_ids": [1, 2]}


def test_claim_order_kinds_and_priority(store, alice):
    a, _ = store.submit_job(alice, "train", {"n": 1})
    b, _ = store.submit_job(alice, "generate", {"n": 2})
    c, _ = store.submit_job(alice, "generate", {"n": 3}, priority=5)
    assert store.queue_position(b.id) == 1 and store.queue_position(c.id) == 0
    assert store.claim_job("w", ["generate"]).job.id == c.id
    assert store.claim_job("w", ["generate"]).job.id == b.id
    assert store.claim_job("w", ["generate"]) is None
    assert store.claim_job("w", ["train", "eval"]).job.id == a.id


def test_expired_lease_requeues_and_old_holder_cannot_complete(store, alice):
    job, _ = store.submit_job(alice, "generate", {})
    first = store.claim_job("dead-worker", ["generate"], lease_s=0.05)
    time.sleep(0.1)
    assert store.requeue_expired() == [job.id]
    second = store.claim_job("w2", ["generate"], lease_s=30)
    assert second.job.id == job.id and second.job.attempts == 2
    assert store.heartbeat(first) is Beat.LEASE_LOST  # the dead worker woke up: its lease is gone
    assert not store.complete_job(first, {"by": "dead"})
    assert store.complete_job(second, {"by": "w2"})
    assert store.get_job(alice, job.id).result == {"by": "w2"}


def _expire(store, job_id: str) -> None:
    """Make a running job's lease run out now (as if its worker stopped beating long ago)."""
    from limner.store.tables import jobs

    with store.engine.begin() as conn:
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(lease_expires=jobs.c.lease_expires - 10_000))


def test_heartbeat_tells_a_lost_lease_from_a_cancel_request(store, alice):
    job, _ = store.submit_job(alice, "generate", {})
    lease = store.claim_job("w1", ["generate"], lease_s=30)
    assert store.heartbeat(lease, lease_s=30, progress={"step": 1, "total": 4}) is Beat.OK
    # cancel: the beat says so, and still extends the lease so the worker can record the stop
    store.cancel_job(alice, job.id)
    before = store.get_job(alice, job.id).lease_expires
    time.sleep(0.01)
    beat = store.heartbeat(lease, lease_s=30, progress={"step": 2, "total": 4})
    assert beat is Beat.CANCEL_REQUESTED and not beat
    after = store.get_job(alice, job.id)
    assert after.lease_expires > before and after.progress == {"step": 2, "total": 4}
    assert store.finish_cancelled(lease) and store.get_job(alice, job.id).state == "cancelled"
    # a finished job: the old lease is lost, and beating it writes nothing
    assert store.heartbeat(lease, progress={"step": 3, "total": 4}) is Beat.LEASE_LOST
    assert store.get_job(alice, job.id).progress == {"step": 2, "total": 4}

    # lost: the lease ran out and the job went back to the queue, then to another worker
    other, _ = store.submit_job(alice, "generate", {"n": 2})
    first = store.claim_job("w1", ["generate"], lease_s=30)
    _expire(store, other.id)
    assert store.requeue_expired() == [other.id]
    assert store.heartbeat(first, progress={"step": 9, "total": 9}) is Beat.LEASE_LOST  # queued again
    second = store.claim_job("w2", ["generate"], lease_s=30)
    store.cancel_job(alice, other.id)  # a cancel of the new claim is not news for the old one
    assert store.heartbeat(first, progress={"step": 9, "total": 9}) is Beat.LEASE_LOST
    assert store.heartbeat(second) is Beat.CANCEL_REQUESTED
    row = store.get_job(alice, other.id)
    assert row.lease_owner == "w2" and row.progress is None  # the lost holder wrote nothing
    assert [b.value for b in Beat] == ["ok", "lease_lost", "cancel_requested"] and bool(Beat.OK)


def test_job_lost_too_often_fails_with_reason(store, alice):
    job, _ = store.submit_job(alice, "generate", {})
    for _ in range(3):
        store.claim_job("w", ["generate"], lease_s=0.01)
        time.sleep(0.03)
        store.requeue_expired()
    failed = store.get_job(alice, job.id)
    assert failed.state == "failed" and "lease expired" in failed.error


def test_fail_keeps_reason_and_retry_requeues(store, alice):
    job, _ = store.submit_job(alice, "generate", {})
    lease = store.claim_job("w", ["generate"])
    assert store.fail_job(lease, "CUDA out of memory", retry=True)
    assert store.get_job(alice, job.id).state == "queued"
    lease = store.claim_job("w", ["generate"])
    assert store.fail_job(lease, "CUDA out of memory: tried to allocate 2 GiB")
    failed = store.get_job(alice, job.id)
    assert failed.state == "failed" and "2 GiB" in failed.error
    assert not store.complete_job(lease, {})


def test_queue_limit_raises_with_retry_after(store, alice):
    for i in range(3):
        store.submit_job(alice, "generate", {"i": i}, limit=3)
    with pytest.raises(QueueFull) as err:
        store.submit_job(alice, "generate", {"i": 9}, limit=3)
    assert err.value.retry_after >= 1
    store.claim_job("w", ["generate"])  # one leaves the queue: room again
    store.submit_job(alice, "generate", {"i": 10}, limit=3)


def test_idempotency_key_returns_the_same_job_per_user(store, alice, bob):
    job, created = store.submit_job(alice, "generate", {"p": "cat"}, idempotency_key="k1")
    again, created2 = store.submit_job(alice, "generate", {"p": "cat"}, idempotency_key="k1")
    assert created and not created2 and again.id == job.id
    with pytest.raises(IdempotencyMismatch):
        store.submit_job(alice, "generate", {"p": "dog"}, idempotency_key="k1")
    other, created3 = store.submit_job(bob, "generate", {"p": "cat"}, idempotency_key="k1")
    assert created3 and other.id != job.id  # keys are scoped per user
    assert len(store.list_jobs(alice)) == 1


def test_client_job_id_must_be_a_canonical_uuid(store, alice):
    with pytest.raises(UsageError, match="job_id"):
        store.submit_job(alice, "generate", {}, job_id="../../etc")
    with pytest.raises(UsageError, match="canonical"):
        store.submit_job(alice, "generate", {}, job_id=str(uuid.uuid4()).upper())


def test_cancel_is_idempotent_and_owner_only(store, alice, bob):
    queued, _ = store.submit_job(alice, "generate", {"a": 1})
    with pytest.raises(NotFound):
        store.cancel_job(bob, queued.id)
    assert store.cancel_job(alice, queued.id).state == "cancelled"
    assert store.cancel_job(alice, queued.id).state == "cancelled"
    running, _ = store.submit_job(alice, "generate", {"a": 2})
    lease = store.claim_job("w", ["generate"])
    assert lease.job.id == running.id
    assert store.cancel_job(alice, running.id).cancel_requested
    assert store.heartbeat(lease) is Beat.CANCEL_REQUESTED  # the worker is told to stop
    assert store.finish_cancelled(lease)
    assert store.get_job(alice, running.id).state == "cancelled"
    done, _ = store.submit_job(alice, "generate", {"a": 3})
    lease = store.claim_job("w", ["generate"])
    store.complete_job(lease, {})
    assert store.cancel_job(alice, done.id).state == "done"  # finished: unchanged


def test_users_see_only_their_jobs(store, alice, bob):
    job, _ = store.submit_job(alice, "generate", {})
    with pytest.raises(NotFound):
        store.get_job(bob, job.id)
    assert store.list_jobs(bob) == []
    assert [j.id for j in store.list_jobs(alice, state="queued")] == [job.id]


def test_concurrent_claims_never_share_a_job(store, alice):
    n = 40
    for i in range(n):
        store.submit_job(alice, "generate", {"i": i})
    claimed: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            while (lease := store.claim_job(name, ["generate"])) is not None:
                assert store.complete_job(lease, {"by": name})
                with lock:
                    claimed.append(lease.job.id)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(f"w{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(claimed) == n and len(set(claimed)) == n
    assert all(j.state == "done" for j in store.list_jobs(alice))
