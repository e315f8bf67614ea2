"""Studio soak: 500 tiny generations through one studio; its RSS and open file descriptors
are sampled every 50 jobs and must stay flat (a leak shows as a steady climb).

Jobs go in batches of 20 (under the queue limit) through ``limner.client`` over HTTP, each
waited for; the embedded worker makes one 16 px image per job (the tests' tiny run, 2 steps,
so the loop exercises the server, queue, store and files rather than the model).

    .venv/bin/python benchmarks/studio_soak.py --jobs 500
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from studio_common import Server, tiny_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--every", type=int, default=50)
    args = p.parse_args()
    from machine import cpu_name

    run = tiny_run(Path(tempfile.mkdtemp(prefix="limner-bench-run-")))
    server = Server(run)
    c = server.client
    samples = []
    t0 = time.perf_counter()
    try:
        done = 0
        while done < args.jobs:
            ids = [c.generate(model="bench", prompt=f"soak {done + i}", steps=2, seed=done + i)["id"]
                   for i in range(min(20, args.jobs - done))]
            for job_id in ids:
                state = c.wait(job_id, timeout=600, poll=0.1)["state"]
                if state != "done":
                    raise SystemExit(f"job {job_id} {state}")
            done += len(ids)
            if done % args.every == 0 or done == args.jobs:
                samples.append((done, server.rss_mib(), server.open_files(), time.perf_counter() - t0))
        images = sum(1 for _ in c.iter_images(limit=200))
    finally:
        server.close()
    print(f"{cpu_name()}; {args.jobs} jobs, one image each")
    print(f"{'jobs':>6} {'RSS MiB':>8} {'fds':>5} {'s':>7}")
    for done, rss, fds, secs in samples:
        print(f"{done:6d} {rss:8.1f} {fds:5d} {secs:7.1f}")
    first, last = samples[0], samples[-1]
    print(f"RSS {first[1]:.1f} -> {last[1]:.1f} MiB ({last[1] - first[1]:+.1f}), fds {first[2]} -> {last[2]}; "
          f"gallery holds {images} images; {args.jobs / last[3]:.1f} jobs/s")


if __name__ == "__main__":
    main()
