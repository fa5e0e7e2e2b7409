"""Hot-path benchmark: every strategy over HTTP on a large pool, against exact search and peers.

Builds a pool of ``--items`` seeded clustered 512-d vectors (``--classes`` classes, each a mixture
of sub-clusters, as real embeddings are, or another ``--distribution`` of ``distributions.py``;
``--domains`` domains) with ``index: auto``, serves it with
`exemplar serve --workers N` on a loopback port, and drives it from a separate load-generator
process (a lean asyncio HTTP/1.1 client) at concurrency 1 and ``--concurrency``, strategy by
strategy: ``topk``, ``balanced``, ``invariant`` over ``balanced`` and over ``topk`` (after training
the pool's CCI adapter over HTTP), and ``random``. Reports latency p50/p95/p99, throughput, the
window recall of each against exact search on held-out queries (in the adapter space for
``invariant``), select/batch queries/s, server RSS (all processes), the load generator's own CPU
share, and the peers measured in the same run: RICES-style brute force (torch matmul + topk,
in-process) and, when `pymilvus` with Milvus Lite is installed, Milvus Lite with the same IVF
layout. Writes JSON and a markdown table; every loop is bounded in count and time.
``--reuse <folder of an earlier run>`` serves that run's pool instead of building it again.

    python benchmarks/hotpath.py --items 1000000 --workers 2 --out benchmarks/results/hotpath-all-1m.json
"""

from __future__ import annotations

import argparse
import base64
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
from distributions import DISTRIBUTIONS, generate  # noqa: E402

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


def clustered(n: int, dim: int, classes: int, seed: int, distribution: str = "mixture") -> tuple[np.ndarray, np.ndarray]:
    """Seeded labelled vectors (``distributions.py``; ``mixture``, the default, is what this
    benchmark always generated)."""
    return generate(distribution, n, dim, classes, seed)


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else float("nan")


def loadgen(base: str, path: str, bodies: Path, concurrency: int, seconds: float, max_requests: int) -> dict:
    out = subprocess.run([sys.executable, "-c", LOADGEN, base, path, str(bodies), str(concurrency), str(seconds),
                          str(max_requests)], capture_output=True, text=True, timeout=seconds + 300)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of ``pid`` and its children (the worker processes of ``--workers``);
    ``field``: VmRSS (all), RssAnon (the processes' own memory) or RssFile (mapped files, such as
    the vectors read for re-ranking, which the kernel can drop)."""
    total = 0.0
    for p in [pid] + _children(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1]) / 1024
        except FileNotFoundError:
            continue
    return total


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return out + [g for c in out for g in _children(c)]


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


STRATEGIES = {
    # name: (request fields, window truth: "topk", "balanced", or None for no recall)
    "topk": ({"strategy": "topk"}, "topk"),
    "balanced": ({"strategy": "balanced"}, "balanced"),
    "invariant": ({"strategy": "invariant", "invariant_base": "balanced"}, "balanced"),
    "invariant-topk": ({"strategy": "invariant", "invariant_base": "topk"}, "topk"),
    "random": ({"strategy": "random"}, None),
    # the per-request knob: half the tuned probes
    "topk-fast": ({"strategy": "topk", "search": {"recall": "fast"}}, "topk"),
    "balanced-fast": ({"strategy": "balanced", "search": {"recall": "fast"}}, "balanced"),
}


def query_field(q: np.ndarray, vectors: str) -> dict:
    if vectors == "b64":
        return {"embedding_b64": base64.b64encode(q.astype("<f4").tobytes()).decode()}
    return {"embedding": q.round(6).tolist()}


def exact_windows(V: np.ndarray, labels: np.ndarray, Q: np.ndarray, k: int, classes: int
                  ) -> tuple[list[set[int]], list[set[int]]]:
    """Exact ``topk`` and ``balanced`` windows of ``Q`` over ``V`` (rows), as the strategies define them."""
    import faiss

    from exemplar.retrieval.index.classes import round_robin

    exact = faiss.IndexFlatIP(V.shape[1])
    exact.add(np.ascontiguousarray(V, dtype=np.float32))
    _, truth = exact.search(Q, k)
    del exact
    per_class = []
    for c in range(classes):
        members = np.flatnonzero(labels == c)
        flat = faiss.IndexFlatIP(V.shape[1])
        flat.add(np.ascontiguousarray(V[members], dtype=np.float32))
        D, I = flat.search(Q, k)
        per_class.append((D, members[I]))
        del flat
    balanced = [{r for r, _ in round_robin([[(int(i), float(d)) for d, i in zip(D[q], I[q])] for D, I in per_class], k)}
                for q in range(len(Q))]
    return [set(t.tolist()) for t in truth], balanced


def train_adapter(base: str, steps: int, timeout_s: float = 3600) -> dict:
    """Train the pool's CCI adapter over HTTP and wait for the job; returns its record."""
    import httpx

    started = time.perf_counter()
    job = httpx.post(f"{base}/v1/pools/hot/adapters", json={"epochs": 1000, "max_steps": steps}, timeout=60).json()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/v1/jobs/{job['id']}", timeout=60).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(2)
    if job["state"] != "succeeded":
        raise SystemExit(f"adapter training ended {job['state']}: {json.dumps(job)[:2000]}")
    job["wall_s"] = round(time.perf_counter() - started, 1)
    return job


def adapter_space(root: Path, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pool's rows and the queries mapped through its (one) adapter, read from the data folder."""
    from exemplar.retrieval.adapt.adapters import load_adapter_weights

    pool_dir = next((root / "data" / "pools").iterdir())
    segments = sorted((pool_dir / "segments").iterdir())
    if len(segments) != 1:
        raise SystemExit(f"expected the benchmark pool as one segment, found {len(segments)}")
    adapter_dir = next(p for p in (pool_dir / "adapters").iterdir() if p.name.isdigit())
    adapter, _ = load_adapter_weights([adapter_dir])
    A = np.load(segments[0] / "adapters" / adapter_dir.name / "vectors.npy", mmap_mode="r")
    return A, np.ascontiguousarray(adapter.apply(Q), dtype=np.float32)


def measure(base: str, name: str, path: str, bodies: Path, concurrency: int, seconds: float, k: int,
            want: list[set[int]] | None) -> dict:
    run = loadgen(base, path, bodies, concurrency, seconds, 200_000)
    lat = run["latencies"]
    entry: dict = {"requests": len(lat), "errors": sum(v for s, v in run["statuses"].items() if s != "200"),
                   "statuses": run["statuses"], "p50_ms": pct(lat, 50) if lat else None,
                   "p95_ms": pct(lat, 95) if lat else None, "p99_ms": pct(lat, 99) if lat else None,
                   "rps": round(len(lat) / run["elapsed"], 1),
                   # the load generator's own share of the cores it shares with the server
                   "loadgen_cpu_share": round(run["cpu_s"] / run["elapsed"], 3)}
    if concurrency == 1 and want is not None and run["answers"]:
        hits = [len({int(d["id"][1:]) for d in run["answers"][str(i)]["demonstrations"]} & want[i])
                for i in range(len(want)) if str(i) in run["answers"]]
        entry["recall_at_k"] = round(sum(hits) / (len(hits) * k), 4)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--domains", type=int, default=3, help="Domains of the pool's items (the adapter learns across them).")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--index", default="auto")
    parser.add_argument("--distribution", choices=list(DISTRIBUTIONS), default="mixture",
                        help="How the pool's vectors are clustered (benchmarks/distributions.py).")
    parser.add_argument("--workers", type=int, default=1, help="Server processes (`exemplar serve --workers`).")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"Comma-separated, of: {', '.join(STRATEGIES)} (invariant* train an adapter first).")
    parser.add_argument("--vectors", choices=["json", "b64"], default="json",
                        help="How queries carry their vector: a JSON list (embedding) or base64 float32 (embedding_b64).")
    parser.add_argument("--adapter-steps", type=int, default=300, help="Optimiser steps of the adapter training job.")
    parser.add_argument("--peers", default="torch,milvus")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--reuse", type=Path, default=None,
                        help="A folder of an earlier run with the same --items/--dim/--classes: serve its pool, skip the build.")
    args = parser.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    sys.path.insert(0, str(ROOT))
    from exemplar.encoders import EncoderRegistry
    from exemplar.retrieval import PoolService, PoolStore, SnapshotCache
    from exemplar.retrieval.store.catalog import ItemRow

    root = args.reuse or Path(tempfile.mkdtemp(prefix="exemplar-hotpath-"))
    # One mixture: the pool and, held out from it, the queries (never in the pool).
    V, labels = clustered(args.items + args.queries, args.dim, args.classes, seed=0, distribution=args.distribution)
    Q, V, labels = V[args.items :].copy(), V[: args.items], labels[: args.items]
    report: dict = {"distribution": args.distribution,
                    "items": args.items, "dim": args.dim, "classes": args.classes, "k": args.k, "cpus": os.cpu_count(),
                    "server_processes": args.workers, "vectors_as": args.vectors, "concurrency": args.concurrency}
    store = PoolStore(root / "data")
    snapshots = SnapshotCache(store)
    pools = PoolService(store, snapshots, EncoderRegistry())
    if args.reuse is None:
        pools.create(name="hot", encoder=f"precomputed:{args.dim}", index=args.index)
        rows = [ItemRow(-1, f"h{i}", f"class-{c}", f"d{i % args.domains}" if args.domains > 1 else None,
                        None, None, None, None) for i, c in enumerate(labels.tolist())]
        started = time.perf_counter()
        store.write(pools.get("hot"), rows, V, bases=snapshots, source="hotpath", replace_all=True)
        report["build_s"] = round(time.perf_counter() - started, 1)
        del rows
    else:
        report["build_s"] = None
    report["index"] = store.catalog.versions(pools.get("hot").id)[-1].stats["index"]
    snapshots.close()
    store.close()

    truth_topk, truth_balanced = exact_windows(V, labels, Q, args.k, args.classes)
    bodies = {}
    for name in strategies:
        fields, _ = STRATEGIES[name]
        bodies[name] = root / f"{name}.{args.vectors}.jsonl"
        bodies[name].write_text("".join(json.dumps({"query": query_field(q, args.vectors), **fields, "k": args.k}) + "\n"
                                        for q in Q))
    batch = root / f"batch.{args.vectors}.jsonl"
    batch.write_text("".join(json.dumps({"queries": [query_field(q, args.vectors) for q in Q[s : s + 64]],
                                         "strategy": "topk", "k": args.k}) + "\n" for s in range(0, len(Q), 64)))

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, EXEMPLAR_DATA_DIR=str(root / "data"), EXEMPLAR_LOG_LEVEL="warning", PYTHONPATH=str(ROOT))
    server = subprocess.Popen([sys.executable, "-m", "exemplar", "serve", "--port", str(port), "--workers", str(args.workers)],
                              env=env, stdout=open(root / "serve.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_ready(f"{base}/readyz", timeout_s=600)
        report["server_rss_mb"] = round(rss_mb(server.pid), 1)
        report["rss_mb_per_million_items"] = round(report["server_rss_mb"] / (args.items / 1e6), 1)
        results: dict = {}
        truth_invariant: tuple[list[set[int]], list[set[int]]] | None = None
        for name in strategies:
            fields, kind = STRATEGIES[name]
            if name.startswith("invariant") and truth_invariant is None:
                report["adapter_job"] = train_adapter(base, args.adapter_steps)
                wait_ready(f"{base}/readyz", timeout_s=600)
                A, QA = adapter_space(root, Q)
                truth_invariant = exact_windows(A, labels, QA, args.k, args.classes)
                del A
                time.sleep(3)  # every worker's refresher has loaded the adapted version
            if kind is None:
                want = None
            elif name.startswith("invariant"):
                assert truth_invariant is not None
                want = truth_invariant[0] if kind == "topk" else truth_invariant[1]
            else:
                want = truth_topk if kind == "topk" else truth_balanced
            for c in (1, args.concurrency):
                results[f"{name} c={c}"] = measure(base, name, "/v1/pools/hot/select", bodies[name], c, args.seconds,
                                                   args.k, want)
                print(name, c, json.dumps({k: v for k, v in results[f"{name} c={c}"].items() if k != "statuses"}), flush=True)
        run = loadgen(base, "/v1/pools/hot/select/batch", batch, 2, args.seconds, 100_000)
        results["batch x64 c=2"] = {"calls": len(run["latencies"]), "queries_per_s": round(len(run["latencies"]) * 64 / run["elapsed"], 1),
                                    "p50_ms_per_call": pct(run["latencies"], 50),
                                    "loadgen_cpu_share": round(run["cpu_s"] / run["elapsed"], 3)}
        report["http"] = results
        report["server_rss_mb_after_load"] = round(rss_mb(server.pid), 1)
        report["server_rss_anon_mb_after_load"] = round(rss_mb(server.pid, "RssAnon"), 1)
        report["server_rss_file_mb_after_load"] = round(rss_mb(server.pid, "RssFile"), 1)
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
        milvus = milvus_lite(V, Q, args.k, root, np.array([sorted(t) for t in truth_topk]), nlist, nprobe)
        if milvus is not None:
            peers["Milvus Lite (in-process)"] = milvus
    report["peers"] = peers
    write_json(args.out, report)
    print_report(report, args.concurrency)


def print_report(report: dict, concurrency: int) -> None:
    http, peers = report["http"], report["peers"]
    classes = report["index"].get("classes", {})
    print(f"pool: {report['items']} x {report['dim']}, {report['classes']} classes, index {report['index']['factory']} "
          f"{report['index'].get('params')}, class nprobe {classes.get('nprobe')} (window recall "
          f"{classes.get('recall_at_k')}), built in {report['build_s']} s; {report['server_processes']} server "
          f"process(es); vectors as {report['vectors_as']}; server RSS {report['server_rss_mb']} MB when ready, "
          f"{report['server_rss_mb_after_load']} MB after the load ({report['server_rss_anon_mb_after_load']} MB "
          f"anonymous, {report['server_rss_file_mb_after_load']} MB mapped files)")
    brute = peers.get("RICES brute force (torch, in-process)")
    print("| strategy | p50 / p99 ms, c=1 | req/s, c=%d | window recall | load generator CPU share c=1 / c=%d | p50 vs brute force |"
          % (concurrency, concurrency))
    print("|---|---|---|---|---|---|")
    names = dict.fromkeys(key.split(" c=")[0] for key in http if " c=" in key and not key.startswith("batch"))
    for name in names:
        one, many = http.get(f"{name} c=1", {}), http.get(f"{name} c={concurrency}", {})
        ratio = f"{brute['p50_ms'] / one['p50_ms']:.1f}x lower" if brute and one.get("p50_ms") else "-"
        print(f"| {name} | {one.get('p50_ms')} / {one.get('p99_ms')} | {many.get('rps')} | {one.get('recall_at_k', '-')} | "
              f"{one.get('loadgen_cpu_share')} / {many.get('loadgen_cpu_share')} | {ratio} |")
    batch = http["batch x64 c=2"]
    print(f"\nselect/batch (64 topk queries a call, 2 callers): {batch['queries_per_s']} queries/s, "
          f"p50 {batch['p50_ms_per_call']} ms a call, load generator CPU share {batch['loadgen_cpu_share']}")
    if "adapter_job" in report:
        print(f"adapter job: {report['adapter_job']['wall_s']} s wall")
    print("\n| peer | p50 ms | p99 ms | qps at concurrency 1 | recall |\n|---|---|---|---|---|")
    for name, p in peers.items():
        print(f"| {name} | {p['p50_ms']} | {p['p99_ms']} | {p['qps_concurrency_1']} | {p.get('recall_at_k', '-')} |")


if __name__ == "__main__":
    main()
