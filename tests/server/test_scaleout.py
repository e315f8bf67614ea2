"""Scale-out on loopback: 2 ``limner studio`` processes and 3 ``limner worker`` processes on one
PostgreSQL, 200 tiny generation jobs submitted through both studios over real HTTP, one worker
SIGKILLed in the middle of a job. Every job ends done exactly once, and every image has its file
and its row.

PostgreSQL comes from ``LIMNER_TEST_PG_URL`` (``.ci/run`` sets it); the test runs in a schema of
its own, dropped afterwards (the ``pg_url`` fixture). Without the variable it skips, saying so.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from limner.client import StudioClient
from tests.server.conftest import install_run

JOBS = 200
LEASE = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "limner", *args], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, env=env)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> StudioClient:
    client = StudioClient(url, timeout=30)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"studio exited: {log.read_text()[-2000:]}")
        try:
            client.health()
            return client
        except Exception:
            time.sleep(0.3)
    raise AssertionError(f"studio not up: {log.read_text()[-2000:]}")


@pytest.mark.slow
def test_two_studios_three_workers_one_killed(pg_url, tiny_run, tmp_path):
    from limner.store import Store

    home = tmp_path / "home"
    store = Store.open(pg_url, home=home)
    local = store.ensure_local_user()
    install_run(home, local.id, tiny_run)
    procs: list[subprocess.Popen] = []
    try:
        studios = []
        for i in range(2):
            port = free_port()
            log = tmp_path / f"studio{i}.log"
            proc = spawn(["studio", "--db", pg_url, "--home", str(home), "--port", str(port), "--workers", "0",
                          "--queue-limit", "1000"], log)
            procs.append(proc)
            studios.append((f"http://127.0.0.1:{port}", proc, log))
        workers = [spawn(["worker", "--db", pg_url, "--home", str(home), "--lease", str(LEASE)],
                         tmp_path / f"worker{i}.log") for i in range(3)]
        procs.extend(workers)
        clients = [wait_healthy(*s) for s in studios]

        jobs = [clients[i % 2].generate(model="tiny", prompt=f"job {i}", seed=1000 + i, steps=2)["id"]
                for i in range(JOBS)]
        assert len(set(jobs)) == JOBS

        # kill a worker while it holds a job: freeze it, check it still holds one, then SIGKILL
        victim, victim_job = _freeze_a_busy_worker(store, local, jobs, workers)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = [store.get_job(local, j).state for j in jobs]
            if all(s in ("done", "failed", "cancelled") for s in states):
                break
            time.sleep(0.5)
        finished = [store.get_job(local, j) for j in jobs]
        assert [j.state for j in finished] == ["done"] * JOBS, {j.id: (j.state, j.error) for j in finished if j.state != "done"}
        killed = store.get_job(local, victim_job)
        assert killed.attempts == 2  # claimed by the victim, re-queued after its lease, done once
        image_ids = [i for j in finished for i in j.result["image_ids"]]
        assert len(image_ids) == JOBS and len(set(image_ids)) == JOBS  # one image per job, none twice
        for image_id in image_ids:
            assert store.image_file(local, image_id).is_file()
        assert len(clients[1].images(limit=200)["items"]) == JOBS  # the gallery through the other studio
        assert clients[0].job(victim_job)["state"] == "done"
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        store.close()


def _freeze_a_busy_worker(store, user, jobs, workers):
    """(worker process, job id): a worker stopped (SIGSTOP) while it runs that job."""
    pids = {w.pid: w for w in workers}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for job_id in jobs:
            job = store.get_job(user, job_id)
            if job.state != "running" or not job.lease_owner:
                continue
            pid = int(job.lease_owner.split(":")[1])
            if pid not in pids:
                continue
            pids[pid].send_signal(signal.SIGSTOP)
            again = store.get_job(user, job_id)
            if again.state == "running" and again.lease_owner == job.lease_owner:
                return pids[pid], job_id
            pids[pid].send_signal(signal.SIGCONT)  # it finished meanwhile: try another
        time.sleep(0.02)
    raise AssertionError("no worker was caught holding a job")
