"""Studio latency: submit -> first preview and submit -> image, over real HTTP and WebSocket.

A ``limner studio`` on loopback (one embedded worker) gets ``--jobs`` generation requests one
after another; for each, the clock starts before ``POST /api/generate`` and stops at the first
``preview`` event and at the ``image`` event on ``/api/events``. The first job (model load) is
reported apart. Model: the bundled ``emoji`` (latent diffusion, 64 px) by default, or ``--run
DIR`` (``--run tiny`` trains the tests' 16 px run first).

    .venv/bin/python benchmarks/studio_latency.py --jobs 10
    .venv/bin/python benchmarks/studio_latency.py --run tiny --jobs 20 --steps 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from studio_common import Server, percentile, tiny_run


def one_job(server: Server, ws, model: str, steps: int | None, seed: int) -> tuple[float, float]:
    body = {"model": model, "prompt": "a red heart", "num": 1, "seed": seed}
    if steps:
        body["steps"] = steps
    t0 = time.perf_counter()
    job = server.client.request("POST", "/api/generate", json_body=body)["job"]
    first_preview = image = None
    while image is None:
        msg = json.loads(ws.recv(timeout=600))
        if msg.get("job_id") != job["id"] and msg.get("job", {}).get("id") != job["id"]:
            continue
        if msg["type"] == "preview" and first_preview is None:
            first_preview = time.perf_counter() - t0
        elif msg["type"] == "image":
            image = time.perf_counter() - t0
        elif msg["type"] == "job" and msg["job"]["state"] in ("failed", "cancelled"):
            raise SystemExit(f"job {msg['job']['state']}: {msg['job']['error']}")
    return first_preview if first_preview is not None else float("nan"), image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run folder, or 'tiny' (default: the bundled emoji model)")
    p.add_argument("--jobs", type=int, default=10)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    args = p.parse_args()
    from websockets.sync.client import connect

    from machine import machine_description

    run = None
    model = "emoji"
    if args.run == "tiny":
        run, model = tiny_run(Path(tempfile.mkdtemp(prefix="limner-bench-run-"))), "bench"
    elif args.run:
        run, model = Path(args.run), "bench"
    server = Server(run)
    try:
        with connect(f"ws://127.0.0.1:{server.port}/api/events", origin=server.url) as ws:
            cold = one_job(server, ws, model, args.steps, 0)
            warm = [one_job(server, ws, model, args.steps, i + 1) for i in range(args.jobs)]
    finally:
        server.close()
    import torch

    print(machine_description(torch.get_num_threads()))
    print(f"model {model}, steps {args.steps or 'default'}, {args.jobs} warm jobs, one at a time")
    print(f"cold (first job, loads the model): preview {cold[0]*1000:.0f} ms, image {cold[1]*1000:.0f} ms")
    for name, idx in (("submit -> first preview", 0), ("submit -> image", 1)):
        vals = [w[idx] * 1000 for w in warm]
        print(f"{name:24s} p50 {statistics.median(vals):7.0f} ms   p95 {percentile(vals, 95):7.0f} ms")


if __name__ == "__main__":
    main()
