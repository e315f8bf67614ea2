"""The worker: claims jobs from the store's persistent queue, holds a lease with a heartbeat,
runs the job's executor and records its end.

A worker is a thread in ``limner studio`` (the embedded default) or a ``limner worker --db URL``
process on any machine that reaches the same database. Guarantees (the store's queue enforces
the database half, see ``limner.store``):

- a job is claimed by one worker at a time (row locks: ``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL, an immediate transaction on SQLite) under a lease token that changes per claim;
- the heartbeat extends the lease every ``lease / 3`` seconds; a worker that dies (SIGKILL)
  stops beating, the lease expires and the job is queued again for another worker;
- finishing is conditional on the lease token, so a job whose lease was lost and re-claimed is
  never completed twice; its images are stored under their content hash, so a retried job
  writes the same files and rows instead of duplicates (seeds are fixed at submit time);
- the heartbeat tells a lost lease from a cancel request (``limner.store.Beat``): on a lost
  lease the worker stops at the executor's next step and writes nothing more for the job (no
  image, no checkpoint, no final state: another worker may own it now); on a cancel request it
  stops at the next step and records the job as cancelled;
- an executor that raises (out of memory included) fails only its own job, with the reason kept.

The lease/heartbeat scheme is the one of Google's Chubby and of most SQL job queues
(e.g. graphile-worker, Oban): at-least-once delivery, exactly-once completion by fencing token.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from limner.jobs.events import EventHub, image_event, job_event, preview_event, progress_event
from limner.jobs.views import image_summary, job_summary
from limner.jobs.executors import EXECUTORS, JobCancelled, LeaseLost, RunCache, failure_reason, run_generate
from limner.store.models import Beat

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0
POLL_SECONDS = 0.25
PROGRESS_WRITE_INTERVAL = 0.25  # store writes of progress (and the latest preview) per job


def worker_id() -> str:
    """A name for this worker that is unique across machines and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class RunningJob:
    """The job a worker holds, and what the executor reports while it runs (a JobContext).

    ``cancel_flag`` is set when the job's owner cancelled it, ``lost_flag`` when a heartbeat
    found the lease lost; either makes ``cancel_requested`` true, so the executor stops at its
    next step, and the worker then records the end only in the first case."""

    worker: "Worker"
    lease: Any  # limner.store.models.Lease
    device: str
    progress_state: dict[str, Any] = field(default_factory=dict)
    cancel_flag: threading.Event = field(default_factory=threading.Event)
    lost_flag: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    beat_lock: threading.Lock = field(default_factory=threading.Lock)
    last_write: float = 0.0
    saved: int = 0
    owner: int | None = None  # the job's owner now (accounts turned on can move it)

    @property
    def job(self) -> Any:
        return self.lease.job

    @property
    def job_id(self) -> str:
        return self.lease.job.id

    @property
    def attempt(self) -> int:
        """Which claim of the job this is (1 first; more after a worker stopped or died)."""
        return max(1, int(self.lease.job.attempts or 1))

    @property
    def owner_id(self) -> int:
        return int(self.owner if self.owner is not None else self.lease.job.owner_id)

    def progress(self, step: int, total: int, loss: float | None = None) -> None:
        self.progress_state.update(step=step, total=total)
        if loss is not None:
            self.progress_state["loss"] = loss
        self.emit(progress_event(self.job_id, step, total, loss))
        self._write_progress()

    def preview(self, step: int, total: int, image: str) -> None:
        self.progress_state.update(preview=image, preview_step=step)
        self.emit(preview_event(self.job_id, step, total, image))

    def emit(self, event: dict[str, Any]) -> None:
        if self.worker.hub is not None and not self.lease_lost():
            self.worker.hub.publish([self.owner_id], event)

    def cancel_requested(self) -> bool:
        return self.cancel_flag.is_set() or self.lost_flag.is_set() or self.worker.stopping.is_set()

    def lease_lost(self) -> bool:
        """Whether this worker lost the job's lease (it must write nothing more for the job)."""
        return self.lost_flag.is_set()

    def save_image(self, generated: Any, parent_id: int | None) -> dict[str, Any]:
        if self.lease_lost():
            raise LeaseLost(f"job {self.job_id}: lease lost; image not stored")
        summary = self.worker.save_image(self, generated, parent_id)
        self.emit(image_event(self.job_id, summary))
        return summary

    def _write_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_write >= PROGRESS_WRITE_INTERVAL:
            self.last_write = now
            self.worker.beat(self)


class Worker:
    """Claims and runs jobs until stopped.

    Args:
        store: the gallery store (``limner.store``); the worker uses its queue and image calls.
        home: the studio's home folder (images, thumbs, runs).
        device: where models run.
        hub: in-process event hub (the embedded worker of a studio); None in ``limner worker``.
        kinds: job kinds this worker takes (None = all it knows).
        lease_s: lease seconds; the heartbeat runs every third of it.
        nproc_per_node: processes per training job; above 1 a training job runs as ``limner
            train`` under torchrun in a child process group (``limner.jobs.torchrun``), 1 runs
            it in this process.
    """

    def __init__(self, store: Any, home: Path, *, device: str = "cpu", hub: EventHub | None = None,
                 kinds: tuple[str, ...] | None = None, lease_s: float = LEASE_SECONDS,
                 poll: float = POLL_SECONDS, name: str | None = None,
                 summarize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 nproc_per_node: int = 1) -> None:
        from limner.jobs.torchrun import check_device

        check_device(device, nproc_per_node)
        self.nproc_per_node = int(nproc_per_node)
        self.store = store
        self.home = Path(home)
        self.device = device
        self.hub = hub
        self.kinds = kinds or ("generate", *EXECUTORS)
        self.lease_s = lease_s
        self._last_requeue = 0.0
        self.poll = poll
        self.name = name or worker_id()
        self.summarize = summarize or image_summary
        self.runs = RunCache()
        self.stopping = threading.Event()
        self.current: RunningJob | None = None
        self._thread: threading.Thread | None = None
        self.completed = 0
        self._admin_user = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Worker":
        """Run the loop in a daemon thread (the studio's embedded worker)."""
        self._thread = threading.Thread(target=self.run_forever, name=f"limner-worker-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the loop to stop; a running job is interrupted at its next step and re-queued."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                ran = self.run_once()
            except Exception:  # a store hiccup must not kill the worker; log and retry
                log.exception("worker %s: loop error", self.name)
                ran = False
            if not ran:
                self.stopping.wait(self.poll)

    def run_once(self) -> bool:
        """Claim and run one job; False when the queue had none for us."""
        self._requeue_expired()
        lease = self.store.claim_job(self.name, list(self.kinds), lease_s=self.lease_s)
        if lease is None:
            return False
        running = RunningJob(self, lease, self.device)
        self.current = running
        self._publish_job(lease.job.id)
        beat = threading.Thread(target=self._heartbeat, args=(running,), daemon=True)
        beat.start()
        try:
            self._execute(running)
        finally:
            running.done.set()  # ends the heartbeat thread
            beat.join(5)
            self.current = None
            self._publish_job(lease.job.id)
        return True

    def _requeue_expired(self) -> None:
        """Every few seconds, any worker puts the jobs of dead workers back in the queue."""
        now = time.monotonic()
        if now - self._last_requeue >= min(5.0, self.lease_s / 3):
            self._last_requeue = now
            for job_id in self.store.requeue_expired():
                log.warning("job %s: its worker stopped beating; queued again", job_id)
                self._publish_job(job_id)

    # ------------------------------------------------------------------ one job
    def _execute(self, running: RunningJob) -> None:
        job, lease = running.job, running.lease
        try:
            if job.kind == "generate":
                result = run_generate(job.payload, running, self.runs)
            elif job.kind == "train" and self.nproc_per_node > 1:
                from limner.jobs.torchrun import run_train_torchrun

                result = run_train_torchrun(job.payload, running, self.nproc_per_node)
            elif job.kind in EXECUTORS:
                result = EXECUTORS[job.kind](job.payload, running)
            else:
                raise ValueError(f"this worker cannot run {job.kind!r} jobs")
        except JobCancelled:
            if running.lease_lost():
                self._abandon(running)
            elif self.stopping.is_set() and not running.cancel_flag.is_set():
                self.store.fail_job(lease, "the worker stopped; queued again", retry=True)
            elif not self.store.finish_cancelled(lease):
                log.warning("job %s: lease lost while stopping", job.id)
            return
        except BaseException as exc:  # noqa: BLE001 - a job fails alone, whatever it raised
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                if not running.lease_lost():
                    self.store.fail_job(lease, "the worker stopped; queued again", retry=True)
                raise
            if running.lease_lost():  # the failure may come from stopping half way: not the job's
                self._abandon(running)
                _free_memory()
                return
            log.warning("job %s failed: %s", job.id, exc, exc_info=not _is_user_error(exc))
            self.store.fail_job(lease, failure_reason(exc, self.home))
            _free_memory()
            return
        if not running.lease_lost():
            running._write_progress(force=True)  # the last step's progress, before the final state
        if running.lease_lost():
            self._abandon(running)
        elif self.store.complete_job(lease, result):
            self.completed += 1
        else:
            log.warning("job %s: lease lost before completion; another worker owns it", job.id)

    def _abandon(self, running: RunningJob) -> None:
        """A lost lease: the job is not ours any more; leave its row to whoever holds it."""
        log.warning("job %s: lease lost (the job was queued again and may run on another worker); "
                    "stopped without recording a result", running.job_id)

    def _heartbeat(self, running: RunningJob) -> None:
        while not running.done.wait(self.lease_s / 3):
            self.beat(running)

    def beat(self, running: RunningJob) -> None:
        """Extend the lease and store progress. A cancel request stops the executor at its
        next step and the job is recorded as cancelled; a lost lease stops it too, and nothing
        more is written for the job (``Beat``)."""
        if running.lease_lost():
            return
        with running.beat_lock:
            try:
                beat = self.store.heartbeat(running.lease, lease_s=self.lease_s,
                                            progress=dict(running.progress_state))
            except Exception:  # transient database error: the next beat retries
                log.exception("job %s: heartbeat failed", running.job_id)
                return
        if beat is Beat.LEASE_LOST:
            running.lost_flag.set()
        elif beat is Beat.CANCEL_REQUESTED:
            running.cancel_flag.set()

    # ------------------------------------------------------------------ images
    def save_image(self, running: RunningJob, generated: Any, parent_id: int | None) -> dict[str, Any]:
        """File first (atomic), then the row; a crash between them leaves an orphan file that
        the store's reconcile registers at the next start."""
        from limner.jobs.images import store_generated

        running.saved += 1
        current = self.store.job_owner(running.job_id)
        if current is not None:
            running.owner = int(current)  # turning accounts on moves the local user's jobs
        owner = self.store.user_by_id(running.owner_id)
        image = store_generated(self.store, owner, generated, parent_id=parent_id,
                                stem=f"{running.job_id}-{running.saved - 1}")
        return self.summarize(image)

    def _publish_job(self, job_id: str) -> None:
        if self.hub is None:
            return
        job = self._job_as_admin(job_id)
        if job is not None:
            self.hub.publish([int(job.owner_id)], job_event(job_summary(job)))

    def _job_as_admin(self, job_id: str) -> Any:
        from limner.store.errors import NotFound

        try:
            return self.store.get_job(self._admin(), job_id)
        except NotFound:
            return None

    def _admin(self) -> Any:
        if self._admin_user is None:
            self._admin_user = self.store.ensure_local_user()  # an admin: sees every job
        return self._admin_user


def _is_user_error(exc: BaseException) -> bool:
    from limner.errors import LimnerError

    return isinstance(exc, LimnerError)


def _free_memory() -> None:
    """After a failure (often out of memory), give cached allocator memory back."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass
