"""Training jobs under torchrun, the parts that need no training: the command line equals the
in-process options, the resume decision, the process count, stopping a child tree (graceful
and hard, with a grandchild in a session of its own, as torchrun starts its ranks) and progress
read from a run folder."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from limner.errors import UsageError
from limner.jobs.executors import train_options, train_resumes
from limner.jobs.torchrun import (RunFolderProgress, TrainProcess, check_device, marked_pids, resolve_nproc,
                                  train_argv)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _cli_options(argv: list[str], monkeypatch) -> object:
    """What ``limner train`` builds from ``argv`` (the workflow is replaced by a recorder)."""
    import limner.workflows
    from limner.cli.main import main

    seen = []
    monkeypatch.setattr(limner.workflows, "train", lambda opts: seen.append(opts) or type("R", (), {"step": 0})())
    assert main(argv) == 0
    return seen[0]


def _plain(opts) -> dict:
    out = {}
    for f in fields(opts):
        if f.name == "callbacks":
            continue
        value = getattr(opts, f.name)
        if isinstance(value, dict):
            value = {k: str(v) if isinstance(v, Path) else v for k, v in value.items()}
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


@pytest.mark.parametrize("payload", [
    {"name": "r", "data": "/d/emoji", "out": "/h/runs/u1/r", "family": None, "preset": "tiny", "resolution": 16,
     "cond": "text", "train": {"steps": 30, "batch_size": 4, "lr": 0.002, "ema_decay": 0.99, "seed": None},
     "set": {"train.steps": 40, "train.lr_decay": "cosine", "family.P_mean": -0.8}},
    {"name": "l", "data": "/d/emoji", "out": "/h/runs/u1/l", "family": "latent-diffusion", "preset": "small",
     "resolution": 32, "cond": None, "train": {"save_every": 5, "sample_every": 0}, "set": {},
     "family_options": {"vae": "/h/runs/u1/v"}},
    {"name": "r", "data": "/d/emoji", "out": "/h/runs/u1/r", "resume": True, "train": {"steps": 90}},
])
def test_train_argv_is_what_the_in_process_path_trains_with(payload, monkeypatch):
    argv = train_argv(payload, nproc=2, device="cpu", resume=bool(payload.get("resume")))
    assert argv[:8] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "limner", "train"]
    assert all(isinstance(a, str) for a in argv)
    in_process, _ = train_options(payload, "cpu")
    assert _plain(_cli_options(argv[7:], monkeypatch)) == _plain(in_process)


def test_train_argv_refuses_what_it_cannot_spell():
    with pytest.raises(UsageError) as err:
        train_argv({"name": "r", "data": "/d", "out": "/o", "explain": False}, nproc=2, device="cpu")
    assert err.value.field == "explain"


def test_process_count_and_device():
    assert resolve_nproc("3") == 3 and resolve_nproc(2) == 2
    import torch

    assert resolve_nproc("auto") == max(1, torch.cuda.device_count())
    for bad in ("0", "-1", "two"):
        with pytest.raises(UsageError) as err:
            resolve_nproc(bad)
        assert err.value.field == "nproc_per_node"
    with pytest.raises(UsageError) as err:
        check_device("cuda:1", 2)
    assert err.value.field == "device"
    check_device("cuda:1", 1)
    check_device("cpu", 8)


def test_a_claimed_again_job_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    payload = {"name": "run", "data": str(tmp_path), "out": str(out)}
    assert train_resumes(payload, 1) == (False, False)
    assert train_resumes(payload, 2) == (False, False)  # the earlier attempt left nothing
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert train_resumes(payload, 1) == (False, False)  # a first attempt never adopts a folder
    assert train_resumes(payload, 2) == (False, True)  # stopped before its first checkpoint: start over
    ckpt = out / "checkpoints" / "step_000003"
    ckpt.mkdir(parents=True)
    assert train_resumes(payload, 2) == (False, True)  # not committed (no manifest)
    (ckpt / "manifest.json").write_text("{}")
    assert train_resumes(payload, 2) == (True, False)
    assert train_resumes({**payload, "resume": True}, 1) == (True, False)


# a child like torchrun: it starts a "rank" in a session of its own, which writes its pid, and
# both wait; the rank saves (writes a file) and exits 130 on SIGINT, as limner train does
_TREE = """
import os, signal, subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True)
def forward(signum, frame):
    os.killpg(rank.pid, signum)
    os._exit(128 + os.waitstatus_to_exitcode(os.waitpid(rank.pid, 0)[1]))
signal.signal(signal.SIGINT, forward)
signal.signal(signal.SIGTERM, forward)
time.sleep(600)
"""
_RANK = """
import os, signal, sys, time
from pathlib import Path
folder = Path(sys.argv[1])
def save(signum, frame):
    (folder / "saved").write_text(str(signum))
    sys.exit(2)
signal.signal(signal.SIGINT, save)
signal.signal(signal.SIGTERM, save)
(folder / "rank.pid.part").write_text(str(os.getpid()))
os.replace(folder / "rank.pid.part", folder / "rank.pid")  # whole, or not there yet
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_tree(folder: Path) -> tuple[TrainProcess, int]:
    child = TrainProcess([sys.executable, "-c", _TREE, _RANK, str(folder)], folder, kill_grace=2).start()
    deadline = time.monotonic() + 20
    while not (folder / "rank.pid").is_file():
        assert time.monotonic() < deadline and child.poll() is None, child.stderr_tail()
        time.sleep(0.05)
    rank = int((folder / "rank.pid").read_text())
    assert _alive(rank) and rank in marked_pids(child.marker) and child.pid in marked_pids(child.marker)
    return child, rank


def test_a_hard_stop_leaves_no_process_and_no_save(tmp_path):
    child, rank = _start_tree(tmp_path)
    child.kill()
    child.close()
    assert child.poll() is not None and not _alive(rank)
    assert not (tmp_path / "saved").exists()  # the rank got SIGKILL: nothing written
    assert marked_pids(child.marker) == []


def test_a_graceful_stop_lets_the_rank_save(tmp_path):
    child, rank = _start_tree(tmp_path)
    code = child.stop()
    child.close()
    assert code == 130 and (tmp_path / "saved").read_text() == str(int(signal.SIGINT))
    assert not _alive(rank) and marked_pids(child.marker) == []


class _Ctx:
    job_id = "j1"

    def __init__(self) -> None:
        self.progressed: list[tuple] = []
        self.events: list[dict] = []

    def progress(self, step, total, loss=None):
        self.progressed.append((step, total, loss))

    def emit(self, event):
        self.events.append(event)


def test_progress_comes_from_the_run_folder(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")  # an earlier attempt's
    ctx = _Ctx()
    progress = RunFolderProgress(tmp_path, ctx, "run", total=10)
    progress.poll()
    assert ctx.progressed == [] and ctx.events == []
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 2, "loss": 1.5}) + "\n" + json.dumps({"step": 3, "loss": 1.25}) + "\n")
        f.write('{"step": 4, "lo')  # being written
    progress.poll()
    assert ctx.progressed == [(2, 10, 1.5), (3, 10, 1.25)]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('ss": 1.0}\n')
    (tmp_path / "checkpoints" / "step_000004").mkdir(parents=True)
    progress.poll()
    assert ctx.progressed[-1] == (4, 10, 1.0) and ctx.events == []  # no manifest: not committed yet
    (tmp_path / "checkpoints" / "step_000004" / "manifest.json").write_text("{}")
    progress.poll()
    progress.poll()
    assert ctx.events == [{"type": "checkpoint", "job_id": "j1", "run": "run", "step": 4}]
    os.truncate(tmp_path / "metrics.jsonl", 0)  # --overwrite started the run again
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    progress.poll()
    assert ctx.progressed[-1] == (1, 10, 2.0)


def test_a_failed_job_keeps_what_the_ranks_said():
    from limner.jobs.torchrun import failure_lines

    report = ("*****\nSetting OMP_NUM_THREADS ...\n*****\n"
              "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
              "RuntimeError: CUDA error: out of memory\n"
              "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
              "RuntimeError: CUDA error: out of memory\n"
              "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n=====\nlimner FAILED\n")
    assert failure_lines(report) == "RuntimeError: CUDA error: out of memory"
    assert failure_lines("limner train: error: --steps: bad\nlimner train: error: --steps: bad\n") == \
        "limner train: error: --steps: bad"
    assert failure_lines("x" * 5000 + "end", limit=10) == "xxxxxxxend"


_WORKER = """
import sys, time
from pathlib import Path
from limner.jobs.torchrun import TrainProcess
folder = Path(sys.argv[3])
child = TrainProcess([sys.executable, "-c", sys.argv[1], sys.argv[2], str(folder)], folder).start()
(folder / "agent.pid").write_text(str(child.pid))
time.sleep(600)
"""


def test_the_tree_of_a_killed_worker_saves_and_exits(tmp_path):
    """A worker SIGKILLed mid-job: its agent gets SIGTERM (PR_SET_PDEATHSIG) and passes it on,
    so the rank saves and exits instead of training on for nobody."""
    import subprocess

    worker = subprocess.Popen([sys.executable, "-c", _WORKER, _TREE, _RANK, str(tmp_path)])
    try:
        wait = time.monotonic() + 30
        while not (tmp_path / "rank.pid").is_file():
            assert time.monotonic() < wait and worker.poll() is None
            time.sleep(0.05)
        agent, rank = int((tmp_path / "agent.pid").read_text()), int((tmp_path / "rank.pid").read_text())
        worker.kill()
        worker.wait()
        wait = time.monotonic() + 10
        while _alive(agent) or _alive(rank):
            assert time.monotonic() < wait, "the killed worker's training processes kept running"
            time.sleep(0.05)
        assert (tmp_path / "saved").read_text() == str(int(signal.SIGTERM))
    finally:
        worker.kill()
