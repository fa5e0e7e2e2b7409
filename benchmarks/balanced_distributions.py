"""``balanced`` against ``topk`` on differently clustered data (issue 23, part 1).

For each distribution of ``distributions.py`` (equal classes, Zipf class sizes, overlapping
classes, a CLIP-like cone), builds the index ``index: auto`` builds for a labelled pool (the
class-partitioned IVF, tuned for ``topk`` and for ``balanced`` as the store tunes it), then answers
held-out queries (drawn from the same distribution, never in the pool) one at a time on one thread:
``topk`` (k=10) and ``balanced`` (a window of 10 over all classes, one item from each of the ten
classes nearest the query). Reports p50/p95 ms of the index search itself (over HTTP:
``hotpath.py --distribution``), the held-out recall of each against exact search (for ``balanced`` the window
against the exact window), the tuning's chosen parameters as the version's stats record them, and
an upper bound of the share of the pool a ``balanced`` query scans.

    python benchmarks/balanced_distributions.py --items 300000 --out benchmarks/results/balanced_distributions-300k.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from common import write_json  # noqa: E402
from distributions import DISTRIBUTIONS, generate  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exemplar.retrieval.index.auto import AutoIndexPolicy, choose_factory  # noqa: E402
from exemplar.retrieval.index.classes import round_robin  # noqa: E402
from exemplar.retrieval.index.partitioned import build_partitioned, partitionable  # noqa: E402


def exact_window(V: np.ndarray, rows: list[np.ndarray], q: np.ndarray, k: int) -> set[int]:
    best = []
    for members in rows:
        s = V[members] @ q
        j = int(np.argmax(s))
        best.append([(int(members[j]), float(s[j]))])
    return {r for r, _ in round_robin(best, k)}


def one(name: str, n: int, dim: int, classes: int, queries: int, k: int, seed: int) -> dict:
    V, labels = generate(name, n + queries, dim, classes, seed)
    Q, V, labels = V[n:].copy(), np.ascontiguousarray(V[:n]), labels[:n]
    policy = AutoIndexPolicy()
    factory = choose_factory(n, dim, policy)
    if not partitionable(factory):
        raise SystemExit(f"{n} x {dim} gets {factory}, not a partitioned IVF: use more --items")
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    index, parts, stats = build_partitioned(V, labels, classes, factory, policy)
    build_s = time.perf_counter() - started
    faiss.omp_set_num_threads(1)  # one request, one thread: the concurrency-1 hot path
    codes = list(range(classes))
    needed = k if k < classes else None
    depth = 1 if k <= classes else -(-k // classes)
    for q in Q[:20]:  # warm the pages and caches
        index.search(q[None], k)
        parts.search_many(codes, q[None], depth, needed=needed)
    topk_ms, balanced_ms, topk_I, windows = [], [], [], []
    for q in Q:
        t0 = time.perf_counter()
        _, I = index.search(q[None], k)
        t1 = time.perf_counter()
        found = parts.search_many(codes, q[None], depth, needed=needed)
        t2 = time.perf_counter()
        topk_ms.append((t1 - t0) * 1000)
        balanced_ms.append((t2 - t1) * 1000)
        topk_I.append(I[0])
        lists = [[(int(i), float(d)) for d, i in zip(found[c][0][0], found[c][1][0]) if i >= 0] for c in codes]
        windows.append({r for r, _ in round_robin(lists, k)})
    exact = faiss.IndexFlatIP(dim)
    exact.add(V)
    _, I_ref = exact.search(Q, k)
    topk_recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(I_ref, topk_I)]))
    window_recall = float(np.mean([len(w & exact_window(V, parts.rows, q, k)) / k for w, q in zip(windows, Q)]))
    nprobe = parts.nprobe
    lists_per_class = parts.spans[:, 1] - parts.spans[:, 0]
    sizes = np.array([len(r) for r in parts.rows])
    scanned = float(np.sum(np.minimum(nprobe, lists_per_class) / np.maximum(lists_per_class, 1) * sizes) / n)
    p50_t, p50_b = float(np.percentile(topk_ms, 50)), float(np.percentile(balanced_ms, 50))
    return {
        "distribution": name, "items": n, "classes": classes, "class_sizes": [int(sizes.min()), int(sizes.max())],
        "factory": stats["factory"], "build_s": round(build_s, 1),
        "topk": {"params": stats["params"], "tuned_recall": stats["recall_at_k"], "heldout_recall": round(topk_recall, 4),
                 "p50_ms": round(p50_t, 3), "p95_ms": round(float(np.percentile(topk_ms, 95)), 3)},
        "balanced": {"stats": parts.stats, "heldout_window_recall": round(window_recall, 4),
                     "p50_ms": round(p50_b, 3), "p95_ms": round(float(np.percentile(balanced_ms, 95)), 3),
                     "scanned_share_upper_bound": round(scanned, 3)},
        "ratio_p50": round(p50_b / p50_t, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=300_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distributions", default=",".join(DISTRIBUTIONS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = []
    for name in args.distributions.split(","):
        row = one(name, args.items, args.dim, args.classes, args.queries, args.k, args.seed)
        results.append(row)
        t, b = row["topk"], row["balanced"]
        print(f"{name:8s} {row['factory']:12s} topk p50 {t['p50_ms']:.2f} ms (nprobe {t['params'].get('nprobe')}, "
              f"recall {t['heldout_recall']:.3f}) | balanced p50 {b['p50_ms']:.2f} ms (class nprobe "
              f"{b['stats'].get('nprobe')}, window recall {b['heldout_window_recall']:.3f}, scans <= "
              f"{b['scanned_share_upper_bound']:.0%} of the pool) | x{row['ratio_p50']}", flush=True)
    report = {"items": args.items, "dim": args.dim, "k": args.k, "queries": args.queries, "cpus": os.cpu_count(),
              "threads_per_query": 1, "measured": "index search in-process, one query at a time", "results": results}
    if args.out:
        write_json(args.out, report)


if __name__ == "__main__":
    main()
