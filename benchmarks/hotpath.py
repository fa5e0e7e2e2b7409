"""Hot-path benchmark: select over HTTP on a large pool, against exact search and peers.

Builds a pool of ``--items`` seeded clustered 512-d vectors (``--classes`` classes, each a mixture
of sub-clusters, as real embeddings are) with ``index: auto``, serves it with `exemplar serve` on a
loopback port, and drives it from a separate load-generator process (a lean asyncio HTTP/1.1
client) at concurrency 1 and ``--concurrency``. Reports latency p50/p95/p99, throughput, recall@k
of `topk` and `balanced` against exact search on held-out queries, select/batch queries/s, server
RSS per million items, and the peers measured in the same run: RICES-style brute force (torch
matmul + topk, in-process) and, when `pymilvus` with Milvus Lite is installed, Milvus Lite with the
same IVF layout. Writes JSON and a markdown table; every loop is bounded in count and time.
``--reuse <folder of an earlier run>`` serves that run's pool instead of building it again.

    python benchmarks/hotpath.py --items 1000000 --out benchmarks/results/hotpath.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# faiss/torch OpenMP threads in this process must not spin on the cores the server is measured on.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from common import free_port, milvus_ivf_collection, wait_ready, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

LOADGEN = r"""
import asyncio, json, sys, time
from urllib.parse import urlsplit
# A lean HTTP/1.1 keep-alive client on asyncio streams: requests pre-encoded, responses framed by
# Content-Length; it costs the shared CPU far less than a full client library, so the server gets it.
base, path, bodies_file, concurrency, limit_s, max_requests = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
host, port = urlsplit(base).hostname, urlsplit(base).port
payloads = [line.strip().encode() for line in open(bodies_file) if line.strip()]
requests = [b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(p)).encode() + b"\r\n\r\n" + p for p in payloads]
latencies, statuses, answers = [], {}, {}
async def exchange(reader, writer, i):
    writer.write(requests[i % len(requests)])
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)
async def worker(start, deadline):
    reader, writer = await asyncio.open_connection(host, port)
    i = start
    try:
        while time.monotonic() < deadline and len(latencies) < max_requests:
            t0 = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(exchange(reader, writer, i), 20)
            except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                statuses["transport"] = statuses.get("transport", 0) + 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                i += concurrency
                continue
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200 and i < len(payloads) and concurrency == 1:
                answers[i] = json.loads(body)
            i += concurrency
    finally:
        writer.close()
async def main():
    await worker(0, time.monotonic() + 2)  # warm-up on one connection
    latencies.clear(); statuses.clear(); answers.clear()
    started, cpu_started = time.monotonic(), time.process_time()
    await asyncio.gather(*(worker(s, started + limit_s) for s in range(concurrency)))
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_started
    print(json.dumps({"latencies": latencies, "statuses": statuses, "elapsed": elapsed, "cpu_s": cpu,
                      "answers": {str(k): v for k, v in answers.items()}}))
asyncio.run(main())
"""


def clustered(n: int, dim: int, classes: int, seed: int, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    subs = rng.normal(size=(classes, 50, dim)).astype(np.float32)
    V = np.empty((n, dim), np.float32)
    labels = rng.integers(0, classes, n)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        c = labels[s:e]
        block = centres[c] + 0.8 * subs[c, rng.integers(0, 50, e - s)] + 0.6 * rng.normal(size=(e - s, dim)).astype(np.float32)
        V[s:e] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return V, labels


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else float("nan")


def loadgen(base: str, path: str, bodies: Path, concurrency: int, seconds: float, max_requests: int) -> dict:
    out = subprocess.run([sys.executable, "-c", LOADGEN, base, path, str(bodies), str(concurrency), str(seconds),
                          str(max_requests)], capture_output=True, text=True, timeout=seconds + 300)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def torch_bruteforce(V: np.ndarray, Q: np.ndarray, k: int) -> dict:
    import torch

    M = torch.from_numpy(V)
    lat = []
    for q in Q[:100]:
        t0 = time.perf_counter()
        torch.topk(M @ torch.from_numpy(q), k)
        lat.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "qps_concurrency_1": round(1000 / np.mean(lat), 1)}


def milvus_lite(V: np.ndarray, Q: np.ndarray, k: int, root: Path, truth: np.ndarray, nlist: int, nprobe: int,
                budget_s: float = 120.0) -> dict | None:
    """Milvus Lite in-process with the same IVF layout (nlist, nprobe); searches bounded by time."""
    made = milvus_ivf_collection(root, V, nlist)
    if made is None:
        return None
    client, insert_s = made
    lat, hits = [], 0
    deadline = time.monotonic() + budget_s
    for i, q in enumerate(Q[:200]):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        found = client.search("hot", data=[q.tolist()], limit=k, search_params={"params": {"nprobe": nprobe}})
        lat.append((time.perf_counter() - t0) * 1000)
        hits += len({int(h["id"]) for h in found[0]} & set(truth[i].tolist()))
    client.close()
    return {"insert_and_index_s": round(insert_s, 1), "queries": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "qps_concurrency_1": round(1000 / np.mean(lat), 1), "recall_at_k": round(hits / (len(lat) * k), 4),
            "index": f"IVF_FLAT nlist {nlist} nprobe {nprobe}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--index", default="auto")
    parser.add_argument("--peers", default="torch,milvus")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--reuse", type=Path, default=None,
                        help="A folder of an earlier run with the same --items/--dim/--classes: serve its pool, skip the build.")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from exemplar.encoders import EncoderRegistry
    from exemplar.retrieval import PoolService, PoolStore, SnapshotCache
    from exemplar.retrieval.store.catalog import ItemRow

    root = args.reuse or Path(tempfile.mkdtemp(prefix="exemplar-hotpath-"))
    # One mixture: the pool and, held out from it, the queries (never in the pool).
    V, labels = clustered(args.items + args.queries, args.dim, args.classes, seed=0)
    Q, V, labels = V[args.items :].copy(), V[: args.items], labels[: args.items]
    report: dict = {"items": args.items, "dim": args.dim, "classes": args.classes, "k": args.k, "cpus": os.cpu_count()}
    store = PoolStore(root / "data")
    snapshots = SnapshotCache(store)
    pools = PoolService(store, snapshots, EncoderRegistry())
    if args.reuse is None:
        pools.create(name="hot", encoder=f"precomputed:{args.dim}", index=args.index)
        rows = [ItemRow(-1, f"h{i}", f"class-{c}", None, None, None, None, None) for i, c in enumerate(labels.tolist())]
        started = time.perf_counter()
        store.write(pools.get("hot"), rows, V, bases=snapshots, source="hotpath", replace_all=True)
        report["build_s"] = round(time.perf_counter() - started, 1)
        del rows
    else:
        report["build_s"] = None
    report["index"] = store.catalog.versions(pools.get("hot").id)[-1].stats["index"]
    snapshots.close()
    store.close()

    import faiss

    exact = faiss.IndexFlatIP(args.dim)
    exact.add(V)
    _, truth = exact.search(Q, args.k)
    del exact
    # Exact balanced windows: each class's nearest rows, interleaved as `balanced` defines it.
    from exemplar.retrieval.index.classes import round_robin

    per_class = []
    for c in range(args.classes):
        members = np.flatnonzero(labels == c)
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(V[members])
        D, I = flat.search(Q, args.k)
        per_class.append((D, members[I]))
        del flat
    balanced_truth = [{r for r, _ in round_robin([[(int(i), float(d)) for d, i in zip(D[q], I[q])] for D, I in per_class],
                                                  args.k)} for q in range(len(Q))]

    topk = root / "topk.jsonl"
    topk.write_text("".join(json.dumps({"query": {"embedding": q.round(6).tolist()}, "strategy": "topk", "k": args.k}) + "\n" for q in Q))
    balanced = root / "balanced.jsonl"
    balanced.write_text("".join(json.dumps({"query": {"embedding": q.round(6).tolist()}, "strategy": "balanced", "k": args.k}) + "\n" for q in Q))
    batch = root / "batch.jsonl"
    batch.write_text("".join(json.dumps({"queries": [{"embedding": q.round(6).tolist()} for q in Q[s : s + 64]], "strategy": "topk", "k": args.k}) + "\n"
                             for s in range(0, len(Q), 64)))

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, EXEMPLAR_DATA_DIR=str(root / "data"), EXEMPLAR_LOG_LEVEL="warning", PYTHONPATH=str(ROOT))
    server = subprocess.Popen([sys.executable, "-m", "exemplar", "serve", "--port", str(port)], env=env,
                              stdout=open(root / "serve.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_ready(f"{base}/readyz", timeout_s=600)
        report["server_rss_mb"] = round(rss_mb(server.pid), 1)
        report["rss_mb_per_million_items"] = round(report["server_rss_mb"] / (args.items / 1e6), 1)
        results = {}
        for name, bodies, path in (("topk", topk, "/v1/pools/hot/select"), ("balanced", balanced, "/v1/pools/hot/select")):
            for c in (1, args.concurrency):
                run = loadgen(base, path, bodies, c, args.seconds, 200_000)
                if not run["latencies"]:
                    results[f"{name} c={c}"] = {"requests": 0, "statuses": run["statuses"], "p50_ms": None,
                                                "p95_ms": None, "p99_ms": None, "rps": 0.0}
                    continue
                lat = run["latencies"]
                entry = {"requests": len(lat), "errors": sum(v for s, v in run["statuses"].items() if s != "200"),
                         "statuses": run["statuses"],
                         "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99),
                         "rps": round(len(lat) / run["elapsed"], 1),
                         # the load generator's own share of the 2 cores it shares with the server
                         "loadgen_cpu_share": round(run["cpu_s"] / run["elapsed"], 3)}
                if c == 1:
                    want = [set(t.tolist()) for t in truth] if name == "topk" else balanced_truth
                    hits = [len({int(d["id"][1:]) for d in run["answers"][str(i)]["demonstrations"]} & want[i])
                            for i in range(len(Q)) if str(i) in run["answers"]]
                    entry["recall_at_k"] = round(sum(hits) / (len(hits) * args.k), 4)
                results[f"{name} c={c}"] = entry
        run = loadgen(base, "/v1/pools/hot/select/batch", batch, 2, args.seconds, 100_000)
        results["batch x64 c=2"] = {"calls": len(run["latencies"]), "queries_per_s": round(len(run["latencies"]) * 64 / run["elapsed"], 1),
                                    "p50_ms_per_call": pct(run["latencies"], 50),
                                    "loadgen_cpu_share": round(run["cpu_s"] / run["elapsed"], 3)}
        report["http"] = results
        report["server_rss_mb_after_load"] = round(rss_mb(server.pid), 1)
        write_json(args.out, report)  # the HTTP figures are kept even if a peer fails later
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    peers = {}
    if "torch" in args.peers:
        peers["RICES brute force (torch, in-process)"] = torch_bruteforce(V, Q, args.k)
    if "milvus" in args.peers:
        factory = report["index"]["factory"]
        nlist = int(factory[3:].split(",")[0]) if factory.startswith("IVF") else 1024
        nprobe = int(report["index"].get("params", {}).get("nprobe", 16))
        milvus = milvus_lite(V, Q, args.k, root, truth, nlist, nprobe)
        if milvus is not None:
            peers["Milvus Lite (in-process)"] = milvus
    report["peers"] = peers
    http = report["http"]
    rows_md = [
        ("select topk p50 / p99, concurrency 1", "<= 5 ms / <= 20 ms", f"{http['topk c=1']['p50_ms']} / {http['topk c=1']['p99_ms']} ms"),
        ("select balanced p50 / p99, concurrency 1", "<= 5 ms / <= 20 ms", f"{http['balanced c=1']['p50_ms']} / {http['balanced c=1']['p99_ms']} ms"),
        (f"select topk throughput, concurrency {args.concurrency}", ">= 1000 req/s", f"{http[f'topk c={args.concurrency}']['rps']} req/s"),
        (f"select balanced throughput, concurrency {args.concurrency}", ">= 1000 req/s", f"{http[f'balanced c={args.concurrency}']['rps']} req/s"),
        ("recall@k of topk vs exact", ">= 0.95", str(http["topk c=1"].get("recall_at_k"))),
        ("recall@k of balanced vs exact", ">= 0.95", str(http["balanced c=1"].get("recall_at_k"))),
        ("select/batch", ">= 2000 queries/s", f"{http['batch x64 c=2']['queries_per_s']} queries/s"),
    ]
    if "RICES brute force (torch, in-process)" in peers:
        ratio = peers["RICES brute force (torch, in-process)"]["p50_ms"] / max(http["topk c=1"]["p50_ms"], 1e-9)
        rows_md.append(("p50 vs RICES brute force", ">= 30x lower", f"{ratio:.1f}x lower"))
    classes = report["index"].get("classes", {})
    print(f"pool: {args.items} x {args.dim}, {args.classes} classes, index {report['index']['factory']} "
          f"{report['index'].get('params')}, per-class indexes nprobe {classes.get('nprobe')} (window recall "
          f"{classes.get('recall_at_k')}), built in {report['build_s']} s; server RSS {report['server_rss_mb']} MB "
          f"when ready, {report['server_rss_mb_after_load']} MB after the load")
    shares = {name: entry.get("loadgen_cpu_share") for name, entry in http.items()}
    print(f"load generator CPU share (CPU time / wall, of 2 cores shared with the server): {json.dumps(shares)}")
    print("| target | goal | measured |\n|---|---|---|")
    for row in rows_md:
        print("| " + " | ".join(row) + " |")
    print("\n| peer | p50 ms | p99 ms | qps at concurrency 1 |\n|---|---|---|---|")
    for name, p in peers.items():
        print(f"| {name} | {p['p50_ms']} | {p['p99_ms']} | {p['qps_concurrency_1']} |")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
