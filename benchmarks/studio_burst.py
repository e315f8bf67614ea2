"""Studio burst: 50 concurrent submits against a queue limit of 20.

All requests start together (one thread each, real HTTP on loopback); every answer must be 202
(queued) or 429 (with Retry-After), never a 5xx. The embedded worker is off, so the queue only
fills: exactly ``--limit`` are accepted.

    .venv/bin/python benchmarks/studio_burst.py
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import threading
import time
from pathlib import Path

import httpx

from studio_common import Server, percentile, tiny_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--limit", type=int, default=20)
    args = p.parse_args()
    from machine import cpu_name

    run = tiny_run(Path(tempfile.mkdtemp(prefix="limner-bench-run-")))
    server = Server(run, queue_limit=args.limit, workers=0)
    statuses: list[int] = []
    retry_after: list[str] = []
    times: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(args.requests)

    def submit(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            start.wait()
            t0 = time.perf_counter()
            r = http.post("/api/generate", json={"model": "bench", "prompt": f"burst {i}", "steps": 2})
            with lock:
                statuses.append(r.status_code)
                times.append(time.perf_counter() - t0)
                if r.status_code == 429:
                    retry_after.append(r.headers.get("retry-after", ""))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(args.requests)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.close()
    counts = collections.Counter(statuses)
    print(f"{cpu_name()}; {args.requests} concurrent submits, queue limit {args.limit}")
    print("answers:", dict(sorted(counts.items())))
    print(f"5xx: {sum(v for k, v in counts.items() if k >= 500)}; 429 without Retry-After: "
          f"{sum(1 for r in retry_after if not r)}")
    ms = [t * 1000 for t in times]
    print(f"answer time p50 {percentile(ms, 50):.0f} ms, p95 {percentile(ms, 95):.0f} ms, max {max(ms):.0f} ms")
    ok = counts.get(202, 0) == args.limit and set(counts) <= {202, 429}
    print("OK" if ok else "UNEXPECTED")


if __name__ == "__main__":
    main()
