"""Soak: minutes of mixed load on one `exemplar serve` over loopback; errors and memory over time.

Serves a precomputed pool of ``--items`` clustered 512-d vectors and a small image pool (the shapes
sample, `exemplar-tiny`), and drives them from ``--workers`` threads for ``--minutes``:
top-k and balanced selects, batches, image queries, item additions (a new version each), stats and
admin reads, rollbacks and roll-forwards, and deliberately bad requests (which must get a 4xx).
An error is a 5xx, a transport failure, or a status other than the one the request calls for.
The server's RSS is sampled every ``--sample-s`` seconds; drift is the last sample minus the
first one taken after the warm-up minute. Writes JSON and a markdown summary.

    python benchmarks/soak.py --minutes 10 --out benchmarks/results/soak.json
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from common import free_port, percentile, wait_ready, write_json  # noqa: E402
from hotpath import clustered, rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAX_REQUESTS = 2_000_000  # a bound on the loop besides the clock


def build_pools(root: Path, items: int) -> tuple[np.ndarray, list[str]]:
    sys.path.insert(0, str(ROOT))
    from exemplar.encoders import EncoderRegistry
    from exemplar.retrieval import PoolService, PoolStore, SnapshotCache
    from exemplar.retrieval.build.runner import build_pool
    from exemplar.retrieval.store.catalog import ItemRow
    from exemplar.samples import generate_shapes

    V, labels = clustered(items + 500, 512, 20, seed=1)
    store = PoolStore(root / "data")
    snapshots = SnapshotCache(store)
    pools = PoolService(store, snapshots, EncoderRegistry())
    pools.create(name="soak", encoder="precomputed:512", index="auto")
    rows = [ItemRow(-1, f"s{i}", f"class-{c}", None, None, None, None, None) for i, c in enumerate(labels[:items].tolist())]
    pools.write(pools.get("soak"), rows, V[:items], source="soak", replace_all=True)
    manifest = generate_shapes(root / "shapes", per_class_per_domain=6)
    pools.create(name="shapes", encoder="open_clip:exemplar-tiny")
    build_pool(store, snapshots, pools.encoders, "shapes", manifest)
    ids = list(snapshots.snapshot("shapes").ids)
    snapshots.close()
    store.close()
    return V[items:], ids


class Mix:
    """One weighted request kind: how to make it and the status it must get."""

    def __init__(self, queries: np.ndarray, shape_ids: list[str], seed: int) -> None:
        self.rng = random.Random(seed)
        self.queries = [q.round(5).tolist() for q in queries]
        self.shape_ids = shape_ids
        self.added = 0
        self.kinds = [
            ("select_topk", 30), ("select_balanced", 25), ("select_batch", 8), ("select_image_item", 8),
            ("add_items", 3), ("pool_stats", 6), ("admin", 5), ("bad_request", 10), ("metrics", 5),
        ]
        self.names = [k for k, _ in self.kinds]
        self.weights = [w for _, w in self.kinds]

    def next(self, worker: int) -> tuple[str, str, str, object, set[int]]:
        kind = self.rng.choices(self.names, self.weights)[0]
        q = self.rng.choice(self.queries)
        if kind == "select_topk":
            return kind, "POST", "/v1/pools/soak/select", {"query": {"embedding": q}, "k": 8}, {200}
        if kind == "select_balanced":
            return kind, "POST", "/v1/pools/soak/select", {"query": {"embedding": q}, "strategy": "balanced", "k": 8}, {200}
        if kind == "select_batch":
            batch = [{"embedding": self.rng.choice(self.queries)} for _ in range(16)]
            return kind, "POST", "/v1/pools/soak/select/batch", {"queries": batch, "k": 8}, {200}
        if kind == "select_image_item":
            return (kind, "POST", "/v1/pools/shapes/select",
                    {"query": {"item_id": self.rng.choice(self.shape_ids)}, "strategy": "balanced", "k": 4}, {200})
        if kind == "add_items":
            self.added += 1
            body = {"items": [{"id": f"w{worker}-{self.added}-{j}", "label": f"class-{self.rng.randrange(20)}",
                               "embedding": self.rng.choice(self.queries)} for j in range(4)]}
            return kind, "POST", "/v1/pools/soak/items", body, {201}
        if kind == "pool_stats":
            return kind, "GET", self.rng.choice(["/v1/pools", "/v1/pools/soak", "/v1/pools/shapes"]), None, {200}
        if kind == "admin":
            return kind, "GET", self.rng.choice(["/v1/admin/stats", "/v1/admin/overview", "/v1/jobs"]), None, {200}
        if kind == "metrics":
            return kind, "GET", "/metrics", None, {200}
        bad = self.rng.choice([
            ("/v1/pools/soak/select", {"query": {"embedding": q[:7]}}, {400}),
            ("/v1/pools/soak/select", {"query": {"item_id": "missing"}}, {404}),
            ("/v1/pools/nope/select", {"query": {"embedding": q}}, {404}),
            ("/v1/pools/soak/select", {"query": {"embedding": q}, "k": 0}, {400}),
            ("/v1/pools/shapes/select", {"query": {"image": "bm90IGFuIGltYWdl"}}, {400}),
        ])
        return kind, "POST", bad[0], bad[1], bad[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--sample-s", type=float, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="exemplar-soak-"))
    queries, shape_ids = build_pools(root, args.items)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, EXEMPLAR_DATA_DIR=str(root / "data"), EXEMPLAR_LOG_LEVEL="warning", PYTHONPATH=str(ROOT),
               EXEMPLAR_KEEP_VERSIONS="10")
    server = subprocess.Popen([sys.executable, "-m", "exemplar", "serve", "--port", str(port)], env=env,
                              stdout=open(root / "serve.log", "w"), stderr=subprocess.STDOUT)
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    samples: dict[str, str] = {}  # the first body seen for each kind of error
    latencies: dict[str, list[float]] = {}
    memory: list[tuple[float, float]] = []
    lock = threading.Lock()
    try:
        wait_ready(f"{base}/readyz", timeout_s=300)
        started = time.monotonic()
        deadline = started + args.minutes * 60
        mix = Mix(queries, shape_ids, args.seed)

        def worker(w: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as client:
                while time.monotonic() < deadline and sum(counts.values()) < MAX_REQUESTS:
                    with lock:
                        kind, method, path, body, expected = mix.next(w)
                    t0 = time.perf_counter()
                    text = ""
                    try:
                        r = client.request(method, path, json=body)
                        status, text = r.status_code, r.text[:300]
                    except httpx.TransportError as exc:
                        status = type(exc).__name__
                    elapsed = (time.perf_counter() - t0) * 1000
                    with lock:
                        counts[kind] += 1
                        latencies.setdefault(kind, []).append(elapsed)
                        if status not in expected:
                            errors[f"{kind} -> {status}"] += 1
                            samples.setdefault(f"{kind} -> {status}", text)

        def switcher() -> None:  # a rollback and a roll-forward every 30 s
            with httpx.Client(base_url=base, timeout=60) as client:
                while time.monotonic() < deadline - 5:
                    time.sleep(30)
                    current = client.get("/v1/pools/soak").json()
                    ready = [v["version"] for v in current["versions"] if v["state"] == "ready"]
                    if len(ready) >= 2:
                        for version in (ready[-2], ready[-1]):
                            r = client.post(f"/v1/pools/soak/versions/{version}/activate")
                            with lock:
                                counts["activate"] += 1
                                # A version pruned between the listing and the call is refused, as it should be.
                                if r.status_code == 409 and "pruned" in r.text:
                                    counts["activate refused: pruned meanwhile"] += 1
                                elif r.status_code != 200:
                                    errors[f"activate -> {r.status_code}"] += 1
                                    samples.setdefault(f"activate -> {r.status_code}", r.text[:300])

        threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(args.workers)]
        threads.append(threading.Thread(target=switcher, daemon=True))
        for t in threads:
            t.start()
        while time.monotonic() < deadline:
            memory.append((round(time.monotonic() - started, 1), round(rss_mb(server.pid), 1)))
            time.sleep(min(args.sample_s, max(0.0, deadline - time.monotonic())))
        for t in threads:
            t.join(timeout=120)
        memory.append((round(time.monotonic() - started, 1), round(rss_mb(server.pid), 1)))
        elapsed = time.monotonic() - started
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    log_errors = sum(1 for line in (root / "serve.log").read_text().splitlines() if "Traceback" in line)
    after_warmup = [m for t, m in memory if t >= 60] or [m for _, m in memory]
    report = {
        "minutes": args.minutes, "workers": args.workers, "items": args.items,
        "requests": sum(v for k, v in counts.items() if k != "activate refused: pruned meanwhile"),
        "rps": round(sum(counts.values()) / elapsed, 1) if elapsed else 0.0, "errors": sum(errors.values()), "error_kinds": dict(errors),
        "error_samples": samples, "activations_refused_pruned": counts["activate refused: pruned meanwhile"],
        "server_tracebacks": log_errors, "by_kind": {k: {"requests": counts[k], "p50_ms": round(percentile(v, 50), 2),
                                                         "p99_ms": round(percentile(v, 99), 2)} for k, v in latencies.items()},
        "activations": counts["activate"],
        "rss_mb": {"first": memory[0][1], "after_warmup": after_warmup[0], "last": memory[-1][1],
                   "max": max(m for _, m in memory), "drift_after_warmup": round(memory[-1][1] - after_warmup[0], 1)},
        "rss_samples": memory,
    }
    print(f"{report['requests']} requests in {elapsed:.0f} s ({report['rps']} req/s), errors {report['errors']} "
          f"{report['error_kinds']}, server tracebacks {log_errors}; activations {report['activations']} "
          f"({report['activations_refused_pruned']} refused: pruned meanwhile)")
    for kind, text in samples.items():
        print(f"  first {kind}: {text}")
    print(f"server RSS MB: first {report['rss_mb']['first']}, after warm-up {report['rss_mb']['after_warmup']}, "
          f"last {report['rss_mb']['last']}, max {report['rss_mb']['max']}, drift {report['rss_mb']['drift_after_warmup']}")
    print("\n| request | count | p50 ms | p99 ms |\n|---|---|---|---|")
    for kind, entry in sorted(report["by_kind"].items()):
        print(f"| {kind} | {entry['requests']} | {entry['p50_ms']} | {entry['p99_ms']} |")
    write_json(args.out, report)
    if report["errors"] or log_errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
