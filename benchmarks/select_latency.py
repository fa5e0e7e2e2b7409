"""Select latency over HTTP on the demo pool: p50/p95/p99 of sequential requests (concurrency 1).

Starts `exemplar demo` as a real server process on a free loopback port, warms up, then times
`--requests` select calls end to end from this (separate) process with httpx. Writes JSON and
prints a markdown table. Figures only; nothing here passes or fails on time.

    python benchmarks/select_latency.py --requests 200 --out benchmarks/results/select_latency.json
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common import free_port, percentile, wait_ready, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="exemplar-bench-"))
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    log = open(data / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "exemplar", "demo", "--data-dir", str(data / "d"),
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    results = {}
    try:
        wait_ready(f"{base}/readyz")
        with httpx.Client(base_url=base, timeout=10) as client:
            ids = [f"site-{s}-{c}-{n:04d}" for s in "abc" for c in ("circle", "square", "triangle", "cross") for n in range(12)]
            cases = (
                ("topk, item_id query", "topk", {"k": 8}, "item_id"),
                ("balanced k=8, item_id query", "balanced", {"k": 8}, "item_id"),
                ("balanced k_per_class=2, item_id query", "balanced", {"k_per_class": 2}, "item_id"),
                ("balanced k=8, text query (encoded)", "balanced", {"k": 8}, "text"),
            )
            for label, strategy, extra, kind in cases:
                timings, server = [], []
                for i in range(args.warmup + args.requests):
                    query = {"item_id": ids[i % len(ids)]} if kind == "item_id" else {"text": f"a shape number {i}"}
                    body = {"query": query, "strategy": strategy, **extra}
                    t0 = time.perf_counter()
                    r = client.post("/v1/pools/demo/select", json=body)
                    elapsed = (time.perf_counter() - t0) * 1000
                    r.raise_for_status()
                    if i >= args.warmup:
                        timings.append(elapsed)
                        server.append(r.json()["timing_ms"]["total"])
                results[label] = {
                    "requests": len(timings),
                    "p50_ms": round(percentile(timings, 50), 3),
                    "p95_ms": round(percentile(timings, 95), 3),
                    "p99_ms": round(percentile(timings, 99), 3),
                    "mean_ms": round(statistics.fmean(timings), 3),
                    "server_p50_ms": round(percentile(server, 50), 3),
                }
            size = client.get("/v1/pools/demo").json()["size"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()

    report = {
        "benchmark": "select_latency",
        "pool": "demo", "pool_size": size, "encoder": "open_clip:exemplar-tiny",
        "concurrency": 1, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    print(f"| select on the demo pool ({size} items), concurrency 1 | p50 ms | p95 ms | p99 ms | server p50 ms |")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['server_p50_ms']} |")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
