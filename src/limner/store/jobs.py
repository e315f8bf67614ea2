"""The persistent job queue: submit, claim with a lease, heartbeat, complete/fail, cancel.

States: queued -> running -> done | failed | cancelled (queued -> cancelled directly).
A claim takes the best queued job under a row lock (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
so concurrent workers skip each other's rows instead of waiting; an immediate transaction on
SQLite, which serialises writers) and gives the worker a lease: an expiry time and a fresh
token. Heartbeats extend the lease; ``requeue_expired`` puts the jobs of dead workers back in
the queue. ``complete``/``fail`` succeed only with the current token, so a worker whose lease
ran out (and whose job was claimed again) cannot finish it a second time: a job is done at
most once. Patterns: PostgreSQL's SKIP LOCKED queue idiom (as in Que/graphile-worker) and
lease-based ownership (Gray & Cheriton 1989, "Leases").
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from typing import Any, Sequence

import sqlalchemy as sa

from limner.errors import UsageError
from limner.store import db
from limner.store.errors import IdempotencyMismatch, NotFound, QueueFull
from limner.store.models import Beat, Job, JobState, Lease, User
from limner.store.tables import jobs

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
MAX_ATTEMPTS = 3
_QUEUE_LOCK = 7254191  # pg advisory lock id serialising submits (the queue limit check)


def _job(row: sa.Row) -> Job:
    return Job(
        id=row.id, kind=row.kind, payload=json.loads(row.payload), owner_id=row.owner_id,
        state=row.state, priority=row.priority, idempotency_key=row.idempotency_key,
        attempts=row.attempts, cancel_requested=bool(row.cancel_requested),
        progress=json.loads(row.progress) if row.progress else None,
        result=json.loads(row.result) if row.result else None, error=row.error,
        created=row.created, started=row.started, finished=row.finished,
        lease_owner=row.lease_owner, lease_expires=row.lease_expires,
    )


def _payload_hash(kind: str, payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([kind, payload], sort_keys=True).encode()).hexdigest()


class JobsPart:
    """Mixed into ``Store``: the job queue."""

    def submit_job(self, user: User, kind: str, payload: dict[str, Any], *, priority: int = 0,
                   idempotency_key: str | None = None, limit: int | None = None,
                   job_id: str | None = None) -> tuple[Job, bool]:
        """Queue a job; returns (job, created). With an ``idempotency_key`` already used by
        ``user`` the existing job comes back (created False), or ``IdempotencyMismatch`` when
        the request differs. Past ``limit`` queued+running jobs: ``QueueFull``."""
        if not kind or len(kind) > 32:
            raise UsageError("kind: 1-32 characters")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 256:
            raise UsageError("idempotency_key: 1-256 characters")
        job_id = _canonical_uuid(job_id) if job_id else str(uuid.uuid4())
        digest = _payload_hash(kind, payload)
        try:
            with self._write() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _QUEUE_LOCK})
                if idempotency_key is not None:
                    found = self._by_idempotency(conn, user, idempotency_key, digest)
                    if found is not None:
                        return found, False
                if limit is not None:
                    self._check_limit(conn, limit)
                conn.execute(jobs.insert().values(
                    id=job_id, kind=kind, payload=json.dumps(payload, sort_keys=True), payload_hash=digest,
                    owner_id=user.id, state="queued", priority=priority, idempotency_key=idempotency_key,
                    attempts=0, cancel_requested=False, created=db.now(conn)))
                return _job(conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()), True
        except sa.exc.IntegrityError:
            if idempotency_key is None:
                raise
            with self._read() as conn:  # a concurrent submit with the same key won the race
                found = self._by_idempotency(conn, user, idempotency_key, digest)
            if found is None:
                raise
            return found, False

    def _by_idempotency(self, conn: sa.Connection, user: User, key: str, digest: str) -> Job | None:
        row = conn.execute(sa.select(jobs).where(jobs.c.owner_id == user.id,
                                                 jobs.c.idempotency_key == key)).first()
        if row is None:
            return None
        if row.payload_hash != digest:
            raise IdempotencyMismatch("Idempotency-Key was already used with a different request")
        return _job(row)

    def _check_limit(self, conn: sa.Connection, limit: int) -> None:
        queued = conn.execute(sa.select(sa.func.count()).where(jobs.c.state == "queued")).scalar_one()
        if queued < limit:
            return
        running = conn.execute(sa.select(sa.func.count()).where(jobs.c.state == "running")).scalar_one()
        recent = conn.execute(sa.select(jobs.c.finished - jobs.c.started)
                              .where(jobs.c.state == "done", jobs.c.started.is_not(None))
                              .order_by(jobs.c.finished.desc()).limit(20)).scalars().all()
        per_job = sum(recent) / len(recent) if recent else 5.0
        wait = per_job * (queued - limit + 1) / max(1, running)
        raise QueueFull(f"the queue is full ({queued} jobs waiting, limit {limit})",
                        retry_after=int(min(300, max(1, math.ceil(wait)))))

    def get_job(self, user: User, job_id: str) -> Job:
        """One of ``user``'s jobs (an admin: any job); others are NotFound."""
        with self._read() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        if row is None or (row.owner_id != user.id and not user.is_admin):
            raise NotFound(f"no job {job_id}")
        return _job(row)

    def job_owner(self, job_id: str) -> int | None:
        """The id of the user who owns a job now (None when there is no such job). Workers ask
        before storing a job's images: ownership moves when accounts are turned on."""
        with self._read() as conn:
            return conn.execute(sa.select(jobs.c.owner_id).where(jobs.c.id == job_id)).scalar()

    def list_jobs(self, user: User, *, state: JobState | None = None, kind: str | None = None,
                  limit: int = 100) -> list[Job]:
        """``user``'s jobs, newest first."""
        q = sa.select(jobs).where(jobs.c.owner_id == user.id)
        if state is not None:
            q = q.where(jobs.c.state == state)
        if kind is not None:
            q = q.where(jobs.c.kind == kind)
        with self._read() as conn:
            return [_job(r) for r in conn.execute(q.order_by(jobs.c.created.desc(), jobs.c.id).limit(limit))]

    def queue_position(self, job_id: str) -> int | None:
        """How many queued jobs of the same kind are ahead of ``job_id`` (None unless it is
        queued); it reveals nothing else about other users' jobs."""
        with self._read() as conn:
            row = conn.execute(sa.select(jobs.c.state, jobs.c.kind, jobs.c.priority, jobs.c.created)
                               .where(jobs.c.id == job_id)).first()
            if row is None or row.state != "queued":
                return None
            return conn.execute(sa.select(sa.func.count()).where(
                jobs.c.state == "queued", jobs.c.kind == row.kind,
                sa.or_(jobs.c.priority > row.priority,
                       sa.and_(jobs.c.priority == row.priority,
                               sa.or_(jobs.c.created < row.created,
                                      sa.and_(jobs.c.created == row.created, jobs.c.id < job_id)))))).scalar_one()

    def claim_job(self, worker_id: str, kinds: Sequence[str], lease_s: float = 60.0) -> Lease | None:
        """Take the best queued job of one of ``kinds`` for ``worker_id`` (None when there is none)."""
        token = str(uuid.uuid4())
        with self._write() as conn:
            pick = (sa.select(jobs.c.id).where(jobs.c.state == "queued", jobs.c.kind.in_(list(kinds)))
                    .order_by(jobs.c.priority.desc(), jobs.c.created, jobs.c.id).limit(1)
                    .with_for_update(skip_locked=True))
            job_id = conn.execute(pick).scalar()
            if job_id is None:
                return None
            t = db.now(conn)
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                state="running", lease_owner=worker_id, lease_token=token, lease_expires=t + lease_s,
                heartbeat=t, attempts=jobs.c.attempts + 1, started=t,
                progress=None))  # a re-claimed job starts over: the lost run's progress is stale
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()
        return Lease(job=_job(row), worker_id=worker_id, token=token, expires=row.lease_expires)

    def _holder(self, lease: Lease) -> sa.ColumnElement[bool]:
        return sa.and_(jobs.c.id == lease.job.id, jobs.c.state == "running",
                       jobs.c.lease_token == lease.token)

    def heartbeat(self, lease: Lease, lease_s: float = 60.0,
                  progress: dict[str, Any] | None = None) -> Beat:
        """Extend the lease (and record progress) and say whether the worker should go on.

        Returns ``Beat.OK``; ``Beat.CANCEL_REQUESTED`` when the owner cancelled the job (the
        lease is still extended, so the worker has time to stop and call ``finish_cancelled``);
        or ``Beat.LEASE_LOST`` when this claim no longer holds the job (its lease expired and
        ``requeue_expired`` put it back, another worker may run it now, or it finished): the
        worker must stop without writing anything for it. Nothing is written on a lost lease.
        """
        with self._write() as conn:
            t = db.now(conn)
            values: dict[str, Any] = {"heartbeat": t, "lease_expires": t + lease_s}
            if progress is not None:
                values["progress"] = json.dumps(progress)
            if not conn.execute(jobs.update().where(self._holder(lease)).values(**values)).rowcount:
                return Beat.LEASE_LOST
            cancel = conn.execute(sa.select(jobs.c.cancel_requested).where(jobs.c.id == lease.job.id)).scalar_one()
            return Beat.CANCEL_REQUESTED if cancel else Beat.OK

    def complete_job(self, lease: Lease, result: dict[str, Any]) -> bool:
        """Mark done with ``result``; False (nothing changed) unless ``lease`` is current."""
        return self._finish(lease, "done", result=json.dumps(result))

    def fail_job(self, lease: Lease, error: str, *, retry: bool = False) -> bool:
        """Mark failed with ``error`` (kept for the user); ``retry`` re-queues it instead while
        attempts remain. False unless ``lease`` is current."""
        with self._write() as conn:
            attempts = conn.execute(sa.select(jobs.c.attempts).where(self._holder(lease))).scalar()
            if attempts is None:
                return False
            if retry and attempts < MAX_ATTEMPTS:
                conn.execute(jobs.update().where(self._holder(lease)).values(
                    state="queued", lease_owner=None, lease_token=None, lease_expires=None, error=error))
                return True
        return self._finish(lease, "failed", error=error[:10_000])

    def finish_cancelled(self, lease: Lease) -> bool:
        """The worker stopped a job whose cancellation was requested."""
        return self._finish(lease, "cancelled", error="cancelled")

    def _finish(self, lease: Lease, state: JobState, **values: Any) -> bool:
        with self._write() as conn:
            n = conn.execute(jobs.update().where(self._holder(lease)).values(
                state=state, finished=db.now(conn), lease_token=None, lease_expires=None, **values)).rowcount
        return n == 1

    def cancel_job(self, user: User, job_id: str) -> Job:
        """Cancel (idempotent): a queued job is cancelled at once; a running one is flagged and
        its worker stops at its next heartbeat; a finished one is returned unchanged."""
        with self._write() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id).with_for_update()).first()
            if row is None or (row.owner_id != user.id and not user.is_admin):
                raise NotFound(f"no job {job_id}")
            if row.state == "queued":
                conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.state == "queued").values(
                    state="cancelled", finished=db.now(conn), error="cancelled"))
            elif row.state == "running":
                conn.execute(jobs.update().where(jobs.c.id == job_id).values(cancel_requested=True))
            return _job(conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one())

    def requeue_expired(self) -> list[str]:
        """Put running jobs whose lease has expired back in the queue (or fail them after
        MAX_ATTEMPTS claims); returns their ids."""
        with self._write() as conn:
            t = db.now(conn)
            rows = conn.execute(sa.select(jobs.c.id, jobs.c.attempts, jobs.c.cancel_requested)
                                .where(jobs.c.state == "running", jobs.c.lease_expires < t)
                                .with_for_update(skip_locked=True)).all()
            for r in rows:
                if r.cancel_requested:
                    values: dict[str, Any] = {"state": "cancelled", "finished": t, "error": "cancelled"}
                elif r.attempts >= MAX_ATTEMPTS:
                    values = {"state": "failed", "finished": t,
                              "error": f"worker lost {r.attempts} times (lease expired)"}
                else:
                    values = {"state": "queued"}
                conn.execute(jobs.update().where(jobs.c.id == r.id, jobs.c.state == "running",
                                                 jobs.c.lease_expires < t)
                             .values(lease_owner=None, lease_token=None, lease_expires=None, **values))
        return [r.id for r in rows]


def _canonical_uuid(value: str) -> str:
    try:
        canonical = str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise UsageError(f"job_id: not a UUID ({value!r})") from None
    if canonical != value:
        raise UsageError(f"job_id: not a canonical lower-case UUID ({value!r})")
    return canonical
