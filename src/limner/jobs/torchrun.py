"""Training jobs on a worker with several GPUs: ``limner train`` under ``torchrun``.

A worker started with ``limner worker --nproc-per-node N`` (N > 1) runs each training job as a
child process group::

    python -m torch.distributed.run --standalone --nproc_per_node=N -m limner train DATA --out RUN ...

with the options the job carries (:func:`train_argv`, the same options the in-process path gives
``limner.workflows.train``), in the job's run folder. Data-parallel training itself is
``limner.training.distributed`` (DDP: Li et al., 2020, https://arxiv.org/abs/2006.15704; gloo
on CPU, NCCL on CUDA; rank 0 writes). The worker keeps the job's lease beating while the child
runs (its heartbeat thread) and reads progress from the run folder the child writes:
``metrics.jsonl`` rows (step and loss, so the page's loss curve moves) and the newest committed
checkpoint (``limner.runs``).

Stopping, mirroring the in-process executor:

- cancel: SIGINT to the child's process group, i.e. to the torchrun agent, which passes it on
  once to every rank; ``limner train`` saves a checkpoint and exits. The worker waits
  (``STOP_TIMEOUT``), then records the job as cancelled. Worker shutdown is the same stop, and
  the job is queued again; its next claim resumes from that checkpoint (:func:`train_resumes
  <limner.jobs.executors.train_resumes>`, shared with the in-process path).
- lost lease: nothing more may be written for the job, and SIGTERM would make the ranks save a
  checkpoint, so the ranks get SIGKILL; the agent gets SIGTERM, then SIGKILL after
  ``KILL_GRACE`` seconds.
- the child's exit code 0 completes the job (the run and its final step, as in-process); any
  other fails it with the tail of the child's standard error.

torchrun starts every rank in a session of its own (``start_new_session``), so killing the
agent's process group does not reach the ranks, and a SIGKILLed agent leaves them running.
Every process of a job's tree therefore carries a marker in its environment
(``LIMNER_JOB_PROCESS``, inherited by the agent, the ranks and their data loaders), and a hard
stop kills every process that carries it: the technique of Jenkins' ProcessTreeKiller (its
``BUILD_ID`` cookie). On Linux the agent also gets SIGTERM when the worker that started it dies
(``PR_SET_PDEATHSIG``), so a SIGKILLed worker's ranks save a checkpoint and exit instead of
training on unowned; the job's next claim resumes from it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

from limner.errors import LimnerError, UsageError
from limner.jobs.events import checkpoint_event
from limner.jobs.executors import JobCancelled, JobContext, LeaseLost, train_options, train_resumes

log = logging.getLogger(__name__)

MARKER_ENV = "LIMNER_JOB_PROCESS"
POLL_SECONDS = 0.5  # run-folder reads and stop checks while the child runs
STOP_TIMEOUT = 300.0  # SIGINT -> the ranks finish their step, save and exit
KILL_GRACE = 5.0  # SIGTERM -> SIGKILL for the agent on a lost lease
STDERR_TAIL = 3000  # characters of the child's standard error kept in a failed job's error

# TrainOptions.train keys that ``limner train`` takes as flags; any other goes as --set train.KEY
_TRAIN_FLAGS = {key: "--" + key.replace("_", "-") for key in (
    "steps", "batch_size", "lr", "lr_decay", "grad_accum", "precision", "seed", "save_every",
    "sample_every", "keep_last")}
_PAYLOAD_KEYS = {"name", "data", "out", "family", "preset", "resolution", "cond", "train", "set",
                 "family_options", "resume"}
# a worker itself started by a launcher must not hand its own rank to the child
_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
               "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


class TrainProcessFailed(LimnerError):
    """``limner train`` under torchrun exited with a non-zero code; the message ends with the
    tail of its standard error."""


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def resolve_nproc(value: str | int) -> int:
    """``--nproc-per-node``: a positive count, or ``auto`` = the visible CUDA devices (1 without
    any: the in-process path)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        import torch

        return max(1, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"expected a number of processes or 'auto', got {value!r}", field="nproc_per_node") from None
    if n < 1:
        raise UsageError(f"must be at least 1, got {n}", field="nproc_per_node")
    return n


def check_device(device: str, nproc: int) -> None:
    """Several processes share a device kind, not one device: ``cuda`` gives rank r ``cuda:r``;
    ``cuda:N`` would put every rank on one GPU, and more ranks than GPUs cannot run."""
    if nproc <= 1 or not device.startswith("cuda"):
        return
    if ":" in device:
        raise UsageError(f"{device} names one GPU; with --nproc-per-node {nproc} use --device cuda "
                         "(rank r trains on cuda:r)", field="device")
    import torch

    count = torch.cuda.device_count()
    if nproc > count:
        raise UsageError(f"{nproc} processes on {count} visible CUDA device(s); use at most {count} "
                         "(or --nproc-per-node auto)", field="nproc_per_node")


def train_argv(payload: dict[str, Any], *, nproc: int, device: str, resume: bool = False,
               overwrite: bool = False, python: str | None = None) -> list[str]:
    """The torchrun command line of a training job: ``limner train`` with the options the job
    carries, spelled as flags where the CLI has one and ``--set`` otherwise (a ``--set train.X``
    in the job wins over its ``train.X``, as in-process). No shell is involved."""
    unknown = sorted(set(payload) - _PAYLOAD_KEYS)
    if unknown:
        raise UsageError(f"a training job does not take {unknown[0]!r}", field=unknown[0])
    argv = [python or sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "limner", "train", str(Path(payload["data"]).absolute()),
            "--out", str(Path(payload["out"]).absolute())]
    for key in ("family", "preset", "resolution", "cond"):
        if payload.get(key) is not None:
            argv += [f"--{key}", str(payload[key])]
    settings = dict(payload.get("set") or {})
    for key, value in (payload.get("train") or {}).items():
        if value is None or f"train.{key}" in settings:
            continue
        if key in _TRAIN_FLAGS:
            argv += [_TRAIN_FLAGS[key], str(value)]
        else:
            settings[f"train.{key}"] = value
    for key, value in settings.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    for option, path in sorted((payload.get("family_options") or {}).items()):
        argv += [f"--{option}", str(Path(path).absolute())]
    if resume:
        argv.append("--resume")
    if overwrite:
        argv.append("--overwrite")
    argv += ["--device", device, "--no-progress"]
    return argv


# --------------------------------------------------------------------------------------------
# The child process tree
# --------------------------------------------------------------------------------------------


def marked_pids(marker: str) -> list[int]:
    """Processes (other than this one) whose environment carries ``MARKER_ENV=marker``: a job's
    torchrun agent, its ranks and their children, wherever they were re-parented. Linux
    (``/proc``); elsewhere none are found and only the agent's process group is signalled."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:  # gone, or another user's
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry))
    return found


def _kill(pid: int, sig: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _parent_death_signal():
    """A ``preexec_fn`` that asks Linux to send SIGTERM to the child when the thread that
    started it ends (the worker died); None where prctl is not available. ``prctl`` is looked up
    here, in the parent, so the forked child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the worker died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class TrainProcess:
    """One job's torchrun child: started in a session of its own, stopped gracefully (SIGINT)
    or hard (the marked tree), never left behind."""

    def __init__(self, argv: list[str], cwd: Path, *, stop_timeout: float = STOP_TIMEOUT,
                 kill_grace: float = KILL_GRACE) -> None:
        self.argv = list(argv)
        self.cwd = Path(cwd)
        self.marker = uuid.uuid4().hex
        self.stop_timeout = stop_timeout
        self.kill_grace = kill_grace
        self.stderr: IO[bytes] | None = None
        self.proc: subprocess.Popen | None = None

    def start(self) -> "TrainProcess":
        env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_ENV}
        env[MARKER_ENV] = self.marker
        env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(int(self.stop_timeout))  # the agent's own SIGKILL
        env["PYTHONUNBUFFERED"] = "1"
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.stderr, start_new_session=True,
                                     preexec_fn=_parent_death_signal())
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def stop(self, ctx: JobContext | None = None) -> int | None:
        """SIGINT to the agent's group (the agent passes it on once to each rank: they save and
        exit); wait ``stop_timeout``, then kill. A lease lost meanwhile kills at once.
        Returns the exit code, None when it had to be killed."""
        if self.poll() is None:
            _kill(self.pid, signal.SIGINT, group=True)
        deadline = time.monotonic() + self.stop_timeout
        while self.poll() is None:
            if ctx is not None and ctx.lease_lost():
                self.kill()
                return None
            if time.monotonic() >= deadline:
                log.warning("torchrun %d: no exit %.0f s after SIGINT; killed", self.pid, self.stop_timeout)
                self.kill()
                return None
            time.sleep(0.1)
        self._sweep()
        return self.proc.returncode

    def kill(self) -> None:
        """Without a checkpoint: SIGKILL to the ranks (SIGTERM would make them save), SIGTERM to
        the agent's group, SIGKILL after ``kill_grace``; then every marked process left."""
        if self.proc is None:
            return
        for pid in marked_pids(self.marker):
            if pid != self.proc.pid:
                _kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:  # not reaped: its group id cannot have been reused
            _kill(self.pid, signal.SIGTERM, group=True)
            try:
                self.proc.wait(self.kill_grace)
            except subprocess.TimeoutExpired:
                _kill(self.pid, signal.SIGKILL, group=True)
                self.proc.wait()
        self._sweep()

    def _sweep(self) -> None:
        """Anything of the tree still alive after the agent ended (a rank it could not stop)."""
        for _ in range(50):
            left = marked_pids(self.marker)
            if not left:
                return
            for pid in left:
                _kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        log.warning("torchrun %d: processes %s outlived SIGKILL", self.pid, marked_pids(self.marker))

    def stderr_tail(self, limit: int = STDERR_TAIL) -> str:
        if self.stderr is None:
            return ""
        self.stderr.seek(0, os.SEEK_END)
        size = self.stderr.tell()
        self.stderr.seek(max(0, size - 4 * limit))
        text = self.stderr.read().decode("utf-8", errors="replace").strip()
        return text[-limit:]

    def close(self) -> None:
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None


_LIMNER_LINE = re.compile(r"^limner [a-z-]+: ")  # what limner's CLI prints before a non-zero exit
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt): ")


def failure_lines(stderr: str, limit: int = STDERR_TAIL) -> str:
    """What a failed job keeps of the child's standard error: the messages ``limner train``
    printed and the exceptions the ranks raised, once each (every rank says the same), without
    torchrun's own report around them; else the last ``limit`` characters."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = [line for line in lines if _LIMNER_LINE.match(line)
            or (_EXCEPTION_LINE.match(line) and "ChildFailedError" not in line)]
    text = "\n".join(dict.fromkeys(said)) if said else stderr.strip()
    return text[-limit:]


# --------------------------------------------------------------------------------------------
# Progress from the run folder
# --------------------------------------------------------------------------------------------


class RunFolderProgress:
    """New ``metrics.jsonl`` rows (read from where the last read stopped, whole lines only) and
    newly committed checkpoints of a run folder, reported to the job."""

    def __init__(self, run_dir: Path, ctx: JobContext, run_name: str, total: int) -> None:
        from limner.runs import METRICS_FILE, newest_checkpoint_step

        self.metrics = Path(run_dir) / METRICS_FILE
        self.run_dir = Path(run_dir)
        self.ctx, self.run_name, self.total = ctx, run_name, total
        self.offset = self.metrics.stat().st_size if self.metrics.is_file() else 0  # a resumed run's old rows
        self.checkpoint = newest_checkpoint_step(run_dir)
        self.step = self.checkpoint or 0

    def poll(self) -> None:
        from limner.runs import newest_checkpoint_step

        for row in self._new_rows():
            step = row.get("step")
            if isinstance(step, int):
                loss = row.get("loss")
                self.step = step
                self.ctx.progress(step, self.total, float(loss) if isinstance(loss, (int, float)) else None)
        newest = newest_checkpoint_step(self.run_dir)
        if newest is not None and newest != self.checkpoint:
            self.checkpoint = newest
            self.ctx.emit(checkpoint_event(self.ctx.job_id, self.run_name, newest))

    def _new_rows(self) -> list[dict[str, Any]]:
        try:
            size = self.metrics.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # replaced (--overwrite): read it from the start
            self.offset = 0
        if size == self.offset:
            return []
        with open(self.metrics, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        end = chunk.rfind(b"\n") + 1  # a line being written waits for the next poll
        self.offset += end
        from limner.runs.info import metric_rows

        return metric_rows(chunk[:end].splitlines())


# --------------------------------------------------------------------------------------------
# The executor
# --------------------------------------------------------------------------------------------


def run_train_torchrun(payload: dict[str, Any], ctx: JobContext, nproc: int, *, poll: float = POLL_SECONDS,
                       stop_timeout: float = STOP_TIMEOUT, kill_grace: float = KILL_GRACE) -> dict[str, Any]:
    """Run a training job as ``nproc`` processes under torchrun; the same result, cancel and
    lease semantics as the in-process ``run_train``."""
    from limner.runs import newest_checkpoint_step

    attempt = getattr(ctx, "attempt", 1)
    opts, total = train_options(payload, ctx.device, attempt)  # the in-process checks, before any start
    resume, overwrite = train_resumes(payload, attempt)
    argv = train_argv(payload, nproc=nproc, device=ctx.device, resume=resume, overwrite=overwrite)
    run_dir = opts.out.absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = RunFolderProgress(run_dir, ctx, payload["name"], total)
    ctx.progress(progress.step, total)
    child = TrainProcess(argv, run_dir, stop_timeout=stop_timeout, kill_grace=kill_grace)
    log.info("job %s: %s", ctx.job_id, " ".join(argv))
    try:
        child.start()
        code = _watch(child, progress, ctx, poll)
        if code is None:
            raise LeaseLost(f"job {ctx.job_id}: lease lost; the training processes were killed without saving")
        if ctx.cancel_requested() and code != 0:
            raise JobCancelled(f"stopped; newest checkpoint at step {newest_checkpoint_step(run_dir)}")
        if code != 0:
            tail = child.stderr_tail(limit=16 * STDERR_TAIL)
            log.warning("job %s: limner train (torchrun) exited with %d:\n%s", ctx.job_id, code, tail)
            reason = failure_lines(tail)
            raise TrainProcessFailed(f"limner train ({nproc} processes under torchrun) exited with code {code}"
                                     + (f": {reason}" if reason else ""))
        progress.poll()
        step = newest_checkpoint_step(run_dir)
        return {"run": payload["name"], "step": int(step if step is not None else progress.step)}
    finally:
        if child.proc is not None and child.poll() is None:  # the worker itself was interrupted
            try:
                child.kill() if ctx.lease_lost() else child.stop(ctx)
            except BaseException:  # interrupted again while stopping: no checkpoint then
                child.kill()
                raise
            finally:
                child.close()
        child.close()


def _watch(child: TrainProcess, progress: RunFolderProgress, ctx: JobContext, poll: float) -> int | None:
    """Report progress until the child exits (its code), or stop it: on a lost lease killed
    (None), on a cancel or the worker stopping by SIGINT (its code after saving)."""
    while True:
        code = child.poll()
        if code is not None:
            child._sweep()
            return code
        progress.poll()
        if ctx.lease_lost():
            child.kill()
            return None
        if ctx.cancel_requested():
            code = child.stop(ctx)
            if ctx.lease_lost():
                return None
            return code if code is not None else -int(signal.SIGKILL)
        time.sleep(poll)
