"""``invariant`` with and without the adapter-space index, in-process.

Builds a pool of ``--items`` seeded clustered 512-d vectors (``clustered()`` of hotpath.py,
``--classes`` classes) spread over ``--domains`` domains (each domain shifts its items along its
own direction, the shift CCI learns to remove), indexed as the 1M hot path is (``IVF<n>,SQ4``
partitioned by class, ``--index``), trains the CCI adapter through ``AdapterService`` (the job the
HTTP API runs: training, then mapping and indexing every segment in the adapter space), and
measures, faiss on one thread, the median latency of ``invariant`` (``topk`` and ``balanced``
bases, k=10) over ``--queries`` held-out queries:

- ``indexed``: this change (the adapter index and its class lists, re-scored from the mapped
  adapter vectors);
- ``before``: what main served before it (an exact scan of the mapped adapter vectors, and exact
  per-class ``Flat`` indexes: an in-memory copy of the adapted vectors built on first use);
- ``encoder_space``: ``topk`` / ``balanced`` themselves on the same pool (the cost ``invariant``
  should match);
- ``fallback``: an adapter folder without the index (trained before this change): exact scans over
  the mapped adapter vectors, class by class too, no copy held.

Window recall is measured against the exact windows (``before``). Writes JSON.

    python benchmarks/invariant_index.py --items 200000 --out benchmarks/results/invariant_index.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hotpath import clustered  # noqa: E402

from exemplar.app.adapters import CCITrainer  # noqa: E402
from exemplar.encoders import EncoderRegistry  # noqa: E402
from exemplar.retrieval import AdapterService, JobService, NewItem, PoolService, PoolStore, SnapshotCache  # noqa: E402
from exemplar.retrieval.adapt.adapters import AdapterView  # noqa: E402
from exemplar.retrieval.index.auto import AutoIndexPolicy, ivf_lists  # noqa: E402
from exemplar.retrieval.index.vectors import set_search_threads  # noqa: E402
from exemplar.retrieval.serving.composite import ExactIndex  # noqa: E402
from exemplar.retrieval.serving.strategies import SelectionOptions, get_strategy  # noqa: E402
from exemplar.retrieval.store.items import item_row  # noqa: E402


def domain_shifted(n: int, dim: int, classes: int, domains: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    V, labels = clustered(n, dim, classes, seed)
    rng = np.random.default_rng(seed + 1)
    shifts = rng.normal(size=(domains, dim)).astype(np.float32)
    shifts /= np.linalg.norm(shifts, axis=1, keepdims=True)
    dom = rng.integers(0, domains, n)
    for s in range(0, n, 100_000):
        block = V[s : s + 100_000] + 0.5 * shifts[dom[s : s + 100_000]]
        V[s : s + 100_000] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return V, labels, dom


def timed(strategy, snap, queries: np.ndarray, base: str) -> tuple[list[float], list[list[int]]]:  # noqa: ANN001
    """Per-query latency (ms) and window of ``strategy`` (``invariant`` over ``base``, or ``base`` itself)."""
    options = SelectionOptions(k=10, invariant_base=base)
    strategy.select(snap, queries[:1], [None], None, options)  # warm-up (loads what is loaded lazily)
    latencies, windows = [], []
    for q in queries:
        started = time.perf_counter()
        (window,) = strategy.select(snap, q[None, :], [None], None, options)
        latencies.append((time.perf_counter() - started) * 1000)
        windows.append([p.row for p in window.picks])
    return latencies, windows


def recall(got: list[list[int]], want: list[list[int]]) -> float:
    return round(sum(len(set(g) & set(w)) for g, w in zip(got, want)) / max(sum(len(w) for w in want), 1), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--domains", type=int, default=4)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--index", default=None, help="the pool's factory (default: IVF<ivf_lists(items)>,SQ4)")
    parser.add_argument("--adapter", default="{}", help="adapter parameters (JSON), as the HTTP body's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    index = args.index or f"IVF{ivf_lists(args.items)},SQ4"
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="invariant-index-"))
    out: dict = {"items": args.items, "dim": args.dim, "classes": args.classes, "domains": args.domains,
                 "queries": args.queries, "index": index, "cpus": os.cpu_count(), "faiss_threads": 1}

    V, labels, dom = domain_shifted(args.items + args.queries, args.dim, args.classes, args.domains, args.seed)
    queries = V[args.items :].copy()
    store = PoolStore(data_dir, index_policy=AutoIndexPolicy())
    snapshots = SnapshotCache(store, refresh_s=0.0)
    pools = PoolService(store, snapshots, EncoderRegistry(device="cpu"))
    jobs = JobService(store.catalog)
    try:
        pool = pools.create(name="bench", encoder=f"precomputed:{args.dim}", index=index)
        rows = [item_row(NewItem(id=f"i{i}", label=f"class-{labels[i]}", domain=f"domain-{dom[i]}"))
                for i in range(args.items)]
        started = time.perf_counter()
        store.write(pool, rows, V[: args.items], bases=snapshots, source="benchmark", replace_all=True)
        out["pool_build_s"] = round(time.perf_counter() - started, 1)
        del rows, V

        service = AdapterService(store, snapshots, jobs, CCITrainer("cpu"))
        started = time.perf_counter()
        job = jobs.wait(service.start("bench", json.loads(args.adapter)).id, timeout_s=7200)
        if job.state != "succeeded":
            raise SystemExit(f"adapter training {job.state}: {job.errors}")
        out["adapter_job_s"] = round(time.perf_counter() - started, 1)
        result = job.result
        out["adapter_training_s"] = result.get("seconds")
        out["adapter_index"] = result["index"]
        out["adapter"] = {k: result.get(k) for k in ("adapter_id", "best_epoch", "epochs_run", "val_loss", "out_dim")}

        faiss.omp_set_num_threads(1)
        set_search_threads(1)
        strategy = get_strategy("invariant")
        snap = snapshots.snapshot("bench")
        view = snap.adapter
        segment = snap.space.parts[0].segment
        folder = segment.folder / "adapters" / str(view.adapter_id)
        out["files_mb"] = {name: round(path.stat().st_size / 2**20, 1) for name, path in (
            ("adapter_vectors", folder / "vectors.npy"), ("adapter_index_codes", folder / "index" / "index.faiss"),
            ("encoder_index_codes", segment.folder / "index.faiss"))}
        out["encoder_space"] = {"factory": snap.index.factory, "params": snap.index.params,
                                "class_nprobe": getattr(snap.classes, "nprobe", None)}
        out["served"] = {"index": type(view.index).__name__, "factory": view.index.factory,
                         "params": view.index.params, "classes": type(view.classes).__name__,
                         "class_nprobe": getattr(view.classes, "nprobe", None),
                         "vectors_mapped": isinstance(view.vectors, np.memmap)}

        # before: exact adapter index and exact in-memory per-class Flat indexes (main until this change)
        before = dataclasses.replace(snap, adapter=AdapterView(
            adapter_id=view.adapter_id, adapter=view.adapter, vectors=view.vectors, index=ExactIndex(view.vectors),
            info=view.info))
        started = time.perf_counter()
        before.in_adapter_space()
        out["before_class_indexes_build_s"] = round(time.perf_counter() - started, 1)

        results: dict = {}
        for base in ("topk", "balanced"):
            exact_ms, exact_windows = timed(strategy, before, queries, base)
            ms, windows = timed(strategy, snap, queries, base)
            main_ms, _ = timed(get_strategy(base), snap, queries, base)  # the same search in the encoder space
            results[base] = {"indexed_p50_ms": round(float(np.median(ms)), 3),
                             "encoder_space_p50_ms": round(float(np.median(main_ms)), 3),
                             "indexed_p95_ms": round(float(np.percentile(ms, 95)), 3),
                             "before_p50_ms": round(float(np.median(exact_ms)), 3),
                             "window_recall": recall(windows, exact_windows)}
        del before

        # fallback: the adapter's folder without the index (an adapter trained before this change)
        shutil.rmtree(folder / "index")
        snapshots.segments.forget_pool(pool.id)
        fresh = SnapshotCache(store, refresh_s=0.0)
        try:
            old = fresh.snapshot("bench")
            for base in ("topk", "balanced"):
                ms, windows = timed(strategy, old, queries[: max(10, args.queries // 5)], base)
                results[base]["fallback_exact_p50_ms"] = round(float(np.median(ms)), 3)
        finally:
            fresh.close()
        out["invariant"] = results
    finally:
        jobs.close()
        snapshots.close()
        store.close()
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
