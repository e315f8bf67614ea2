"""Shared by the studio benchmarks: start a real ``limner studio`` on loopback (its own home,
one embedded worker), install a run folder in it, and read a process's RSS and open files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_run(folder: Path) -> Path:
    """Train the tests' tiny text-to-image run (16 px, 4 steps) once into ``folder``."""
    import json

    from limner.workflows import TrainOptions, train

    run = folder / "tiny"
    if (run / "config.json").is_file():
        return run
    data = folder / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    src = REPO / "data" / "emoji-demo"
    rows = [json.loads(line) for line in (src / "metadata.jsonl").read_text().splitlines()][::18][:12]
    with open(data / "metadata.jsonl", "w") as f:
        for row in rows:
            shutil.copy(src / row["file_name"], data / row["file_name"])
            f.write(json.dumps({"file_name": row["file_name"], "text": row["text"]}) + "\n")
    train(TrainOptions(data=data, out=run, preset="tiny", resolution=16, progress=False,
                       train=dict(steps=4, batch_size=4, save_every=4, sample_every=0, seed=3)))
    return run


class Server:
    """``limner studio`` in a subprocess on a fresh home; ``run`` (a folder) is installed as
    the local user's run ``name`` (bundled models such as ``emoji`` need nothing)."""

    def __init__(self, run: Path | None = None, name: str = "bench", queue_limit: int = 100,
                 workers: int = 1, threads: int | None = None) -> None:
        from limner.store import Store

        self.home = Path(tempfile.mkdtemp(prefix="limner-bench-"))
        if run is not None:
            store = Store.open(None, home=self.home)
            uid = store.ensure_local_user().id
            store.close()
            shutil.copytree(run, self.home / "runs" / f"u{uid}" / name)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.log = open(self.home / "studio.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "limner", "studio", "--home", str(self.home), "--port", str(self.port),
             "--queue-limit", str(queue_limit), "--workers", str(workers)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.client = self._wait()

    def _wait(self, timeout: float = 180):
        from limner.client import StudioClient

        client = StudioClient(self.url, timeout=60)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"studio exited:\n{(self.home / 'studio.log').read_text()[-3000:]}")
            try:
                client.health()
                return client
            except Exception:
                time.sleep(0.2)
        raise SystemExit("studio did not come up")

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        return kb / 1024

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]
