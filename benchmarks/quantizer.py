"""Coarse quantizer cost on a large pool: flat scan of the IVF centroids against an HNSW graph.

In-process, on the segment a ``benchmarks/hotpath.py`` run left in its data folder (1M x 512,
``IVF4095,SQ4`` partitioned by class), with the held-out queries that run used (regenerated from
the same seed). CPU time per query on one thread (``time.process_time``, OpenMP and BLAS pinned to
one thread), repeated and interleaved between the two quantizers, median and spread:

- ``topk``: the quantizer alone, the whole faiss search (quantizer + lists), and the whole
  ``VectorIndex.search`` (+ exact re-rank), one query at a time and in batches of 32;
- ``balanced``: ``PartitionedClasses.search_many`` over every class (window of 10, as the strategy
  asks), and its own scoring of the centroids alone;
- recall@10 of topk and the balanced window against exact search, and how often the graph probes
  exactly the lists the flat scan probes;
- three configurations (``CONFIGS``): the BLAS threshold vectors.py set before, the one it sets
  now, and that with the graph;
- the graph's build time, and the quantizer's cost for other numbers of lists (centroids drawn
  from the pool's rows) to place ``GRAPH_MIN_LISTS``.

    python benchmarks/quantizer.py /tmp/exemplar-hotpath-XXXX/data --out benchmarks/results/quantizer-1m.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # CPU per query on one core: what a request costs, whatever the machine

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from exemplar.retrieval.index import quantizer as qz  # noqa: E402
from exemplar.retrieval.index.vectors import RERANK, VectorIndex, set_search_threads  # noqa: E402

BLAS_NOW = faiss.cvar.distance_compute_blas_threshold  # as vectors.py sets it
BLAS_BEFORE = 16  # what vectors.py set before: every search through BLAS on faiss 1.15 (see vectors.py)
# configuration -> (segment loaded as, BLAS threshold)
CONFIGS = {"before": ("flat", BLAS_BEFORE), "flat": ("flat", BLAS_NOW), "graph": ("graph", BLAS_NOW)}
from exemplar.retrieval.store.segments import load_segment  # noqa: E402
from hotpath import clustered  # noqa: E402

K = 10
BATCH = 32


def cpu_ms(run, queries: int, reps: int) -> list[float]:  # noqa: ANN001 - a callable
    """CPU ms per query of ``run()`` (which answers ``queries`` queries), once per repetition."""
    out = []
    for _ in range(reps):
        started = time.process_time()
        run()
        out.append((time.process_time() - started) * 1000 / queries)
    return out


def summary(values: list[float]) -> dict:
    return {"median": round(float(np.median(values)), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def batches(Q: np.ndarray, size: int) -> list[np.ndarray]:
    return [Q[s : s + size] for s in range(0, len(Q) - size + 1, size)]


def find_segment(data: Path) -> Path:
    found = sorted(p.parent for p in data.glob("pools/*/segments/*/index.faiss"))
    if not found:
        raise SystemExit(f"no segment with an index under {data}")
    return max(found, key=lambda p: (p / "index.faiss").stat().st_size)


def held_out_queries(rows: int, dim: int, classes: int, count: int, vectors: np.ndarray) -> np.ndarray:
    """The queries hotpath.py held out of the pool (the same seeded mixture, past its last row)."""
    V, _ = clustered(rows + count, dim, classes, seed=0)
    if not np.array_equal(V[:3], vectors[:3]):
        raise SystemExit("the pool is not hotpath.py's mixture: cannot regenerate its queries")
    return V[rows:].copy()


def exact_truth(vectors: np.ndarray, Q: np.ndarray, row_class: np.ndarray, n_classes: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-K rows per query, and each class's best score and row per query."""
    best = np.full((len(Q), n_classes), -np.inf, np.float32)
    best_row = np.full((len(Q), n_classes), -1, np.int64)
    topD = np.full((len(Q), K), -np.inf, np.float32)
    topI = np.full((len(Q), K), -1, np.int64)
    for s in range(0, len(vectors), 100_000):
        block = np.asarray(vectors[s : s + 100_000], dtype=np.float32)
        S = Q @ block.T
        cls = row_class[s : s + len(block)]
        for c in range(n_classes):
            cols = np.flatnonzero(cls == c)
            if not len(cols):
                continue
            j = np.argmax(S[:, cols], axis=1)
            score = S[np.arange(len(Q)), cols[j]]
            better = score > best[:, c]
            best[better, c], best_row[better, c] = score[better], s + cols[j][better]
        part = np.argpartition(-S, K, axis=1)[:, :K]
        D = np.hstack([topD, np.take_along_axis(S, part, axis=1)])
        I = np.hstack([topI, part + s])
        order = np.argsort(-D, axis=1)[:, :K]
        topD, topI = np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)
    return topI, best, best_row


def window(best: np.ndarray, best_row: np.ndarray) -> list[set[int]]:
    """The balanced window of K: the best row of each of the K classes whose best scores highest."""
    top = np.argsort(-best, axis=1, kind="stable")[:, :K]
    return [set(best_row[q, top[q]].tolist()) for q in range(len(best))]


def balanced_window(classes, Q: np.ndarray) -> list[set[int]]:  # noqa: ANN001
    codes = list(range(len(classes.rows)))
    found = classes.search_many(codes, Q, 1, needed=K)
    best = np.stack([found[c][0][:, 0] for c in codes], axis=1)
    rows = np.stack([found[c][1][:, 0] for c in codes], axis=1)
    return window(best, rows)


def recall(found: list[set[int]] | np.ndarray, truth: list[set[int]] | np.ndarray) -> float:
    hits = sum(len(set(np.asarray(list(f)).tolist()) & set(np.asarray(list(t)).tolist())) for f, t in zip(found, truth))
    return round(hits / (len(truth) * K), 4)


def agreement(flat: faiss.Index, graph: faiss.Index, Q: np.ndarray, nprobe: int) -> float:
    """Share of queries whose ``nprobe`` nearest lists are the same set under both quantizers."""
    _, If = flat.search(Q, nprobe)
    graph.hnsw.efSearch = qz.graph_ef(nprobe)
    _, Ig = graph.search(Q, nprobe)
    return round(float(np.mean([set(a) == set(b) for a, b in zip(If, Ig)])), 4)


def workloads(index: VectorIndex, classes) -> dict:  # noqa: ANN001 - PartitionedClasses
    """What is timed: label -> run(list of query matrices)."""
    ivf = faiss.extract_index_ivf(index.index)
    quant = ivf.quantizer
    C = qz.centroid_matrix(ivf)
    nprobe, wide = ivf.nprobe, K * RERANK
    codes = list(range(len(classes.rows)))
    return {
        "topk quantizer": lambda qs: [quant.search(q, nprobe) for q in qs],
        "topk faiss (quantizer + lists)": lambda qs: [index.index.search(q, wide) for q in qs],
        "topk total (+ re-rank)": lambda qs: [index.search(q, K) for q in qs],
        "balanced centroid scoring": lambda qs: [q @ C.T for q in qs],
        "balanced total": lambda qs: [classes.search_many(codes, q, 1, needed=K) for q in qs],
    }


def measure(segments: dict, Q: np.ndarray, reps: int) -> dict:
    """CPU ms per query of every workload in every configuration (``CONFIGS``), the configurations
    alternating run by run so that drift in the machine's load (other processes share it) hits all
    alike."""
    runs = {name: workloads(segments[seg].index, segments[seg].classes) for name, (seg, _) in CONFIGS.items()}
    sizes = {"single": batches(Q, 1), f"batch {BATCH}": batches(Q, BATCH)}
    raw: dict = {name: {} for name in CONFIGS}
    for rep in range(reps):
        for label in runs["flat"]:
            for size, qs in sizes.items():
                for name, (_, blas) in CONFIGS.items():
                    faiss.cvar.distance_compute_blas_threshold = blas
                    run = runs[name][label]
                    raw[name].setdefault(label, {}).setdefault(size, []).extend(
                        cpu_ms(lambda run=run, qs=qs: run(qs), len(qs) * len(qs[0]), 1))
        print(f"  repetition {rep + 1}/{reps}", flush=True)
    faiss.cvar.distance_compute_blas_threshold = BLAS_NOW
    return {name: {label: {size: summary(v) for size, v in by.items()} for label, by in labels.items()}
            for name, labels in raw.items()}


def sweep(vectors: np.ndarray, Q: np.ndarray, reps: int) -> list[dict]:
    """Flat against graph quantizer for other numbers of lists: cost, agreement, build time."""
    rng = np.random.default_rng(1)
    rows = []
    for nlist in (256, 512, 1024, 2048, 4096, 8192, 16384, 65536):
        C = np.ascontiguousarray(vectors[np.sort(rng.choice(len(vectors), nlist, replace=False))], dtype=np.float32)
        flat = faiss.IndexFlatIP(C.shape[1])
        flat.add(C)
        started = time.perf_counter()
        graph = faiss.IndexHNSWFlat(C.shape[1], qz.GRAPH_M, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = qz.GRAPH_EF_CONSTRUCTION
        graph.add(C)
        build_s = time.perf_counter() - started
        nprobe = max(4, nlist // 1024)  # about what tuning picks at these sizes
        row = {"nlist": nlist, "nprobe": nprobe, "graph_build_s": round(build_s, 3),
               "agreement": agreement(flat, graph, Q, nprobe), "agreement_nprobe_16": agreement(flat, graph, Q, 16)}
        graph.hnsw.efSearch = qz.graph_ef(nprobe)
        for size, qs in (("single", batches(Q, 1)), (f"batch {BATCH}", batches(Q, BATCH))):
            count = sum(len(q) for q in qs)
            times: dict = {name: [] for name in CONFIGS}
            for _ in range(reps):  # alternating, as in measure()
                for name, (seg, blas) in CONFIGS.items():
                    faiss.cvar.distance_compute_blas_threshold = blas
                    quant = graph if seg == "graph" else flat
                    times[name] += cpu_ms(lambda quant=quant, qs=qs: [quant.search(q, nprobe) for q in qs], count, 1)
            for name in CONFIGS:
                row[f"{name} ms {size}"] = summary(times[name])
            faiss.cvar.distance_compute_blas_threshold = BLAS_NOW
        print(f"  sweep {row}", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a hotpath.py run's data folder (read only)")
    parser.add_argument("--queries", type=int, default=500, help="held-out queries hotpath.py made (its --queries)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/quantizer-1m.json")
    args = parser.parse_args()
    # One thread throughout: search_threads would otherwise give a batch every core, and the team's
    # spinning threads would then be billed to the single-query runs that follow.
    set_search_threads(1)
    faiss.omp_set_num_threads(1)
    folder = find_segment(args.data)
    meta = json.loads((folder / "segment.json").read_text())

    # The same segment loaded twice: as before (flat) and with the graph.
    saved_min = qz.GRAPH_MIN_LISTS
    qz.GRAPH_MIN_LISTS = 1 << 30
    started = time.perf_counter()
    before = load_segment(folder.name, folder)
    load_flat_s = time.perf_counter() - started
    qz.GRAPH_MIN_LISTS = saved_min
    started = time.perf_counter()
    after = load_segment(folder.name, folder)
    load_graph_s = time.perf_counter() - started
    ivf_before, ivf_after = (faiss.extract_index_ivf(s.index.index) for s in (before, after))
    assert not qz.uses_graph(ivf_before) and qz.uses_graph(ivf_after)
    vectors = before.vectors
    np.asarray(vectors[::4096])  # noqa: B018 - touch the mapping
    classes_n = len(before.classes.rows)
    Q = held_out_queries(len(vectors), vectors.shape[1], classes_n, args.queries, vectors)
    Q = Q[: len(Q) // BATCH * BATCH]  # whole batches, the same queries for single and batch runs

    row_class = np.full(len(vectors), -1, np.int64)
    for c, rows in enumerate(before.classes.rows):
        row_class[rows] = c
    truth_I, best, best_row = exact_truth(vectors, Q, row_class, classes_n)
    truth_window = window(best, best_row)

    results: dict = {"segment": str(folder), "rows": len(vectors), "dim": int(vectors.shape[1]),
                     "factory": meta["index"]["factory"], "nlist": int(ivf_before.nlist), "nprobe": int(ivf_before.nprobe),
                     "class_nprobe": int(before.classes.nprobe), "queries": len(Q), "reps": args.reps, "k": K,
                     "threads": 1, "graph": {"M": qz.GRAPH_M, "efConstruction": qz.GRAPH_EF_CONSTRUCTION,
                                             "efSearch": qz.graph_ef(ivf_before.nprobe), "min_lists": qz.GRAPH_MIN_LISTS},
                     "load_s": {"flat": round(load_flat_s, 3), "graph": round(load_graph_s, 3)}}
    # Graph build alone, on these centroids.
    C = np.ascontiguousarray(qz.centroid_matrix(ivf_before))
    builds = []
    for _ in range(3):
        started = time.perf_counter()
        graph = faiss.IndexHNSWFlat(C.shape[1], qz.GRAPH_M, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = qz.GRAPH_EF_CONSTRUCTION
        graph.add(C)
        builds.append(time.perf_counter() - started)
    results["graph_build_s"] = summary(builds)
    flat = faiss.downcast_index(ivf_before.quantizer)
    results["agreement"] = {str(p): agreement(flat, graph, Q, p) for p in (1, 4, 8, 16, 32, 64)}

    recall_of = {}
    for name, seg in (("flat", before), ("graph", after)):
        _, I = seg.index.search(Q, K)
        recall_of[name] = {"topk": recall(I, truth_I), "balanced": recall(balanced_window(seg.classes, Q), truth_window)}
    results["recall_at_10"] = recall_of
    print(json.dumps(results, indent=1), flush=True)

    results["cpu_ms_per_query"] = measure({"flat": before, "graph": after}, Q, args.reps)
    results["sweep"] = sweep(vectors, Q, args.reps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results, args))
    print(args.out.with_suffix(".md").read_text())


def markdown(r: dict, args: argparse.Namespace) -> str:
    cpu = r["cpu_ms_per_query"]
    lines = [
        f"# Coarse quantizer at {r['rows']:,} x {r['dim']}: flat scan against HNSW graph",
        "",
        f"`python benchmarks/quantizer.py <hotpath data dir> --reps {args.reps}`: segment `{r['factory']}` "
        f"({r['nlist']} lists, topk nprobe {r['nprobe']}, class nprobe {r['class_nprobe']}), {r['queries']} held-out "
        f"queries, k {r['k']}. CPU ms per query on one thread (process_time), median [min-max] of {args.reps} "
        "interleaved repetitions.",
        "",
        f"Graph: HNSW M {r['graph']['M']}, efConstruction {r['graph']['efConstruction']}, efSearch "
        f"{r['graph']['efSearch']} at nprobe {r['nprobe']}; built in {r['graph_build_s']['median']} s "
        f"(segment load {r['load_s']['flat']} s flat, {r['load_s']['graph']} s with the graph).",
        "",
        f"Configurations: `before` is the flat quantizer with the BLAS threshold vectors.py set before "
        f"({BLAS_BEFORE}: every faiss flat scan through BLAS on faiss 1.15, one query too), `flat` the flat "
        f"quantizer with the threshold now set ({BLAS_NOW}: BLAS from 8 queries of 512 floats), `graph` that "
        "threshold and the graph quantizer (what loading now does at this size).",
        "",
        "| CPU ms / query | before single | flat single | graph single | before batch 32 | flat batch 32 | graph batch 32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in cpu["flat"]:
        cells = []
        for size in ("single", f"batch {BATCH}"):
            for name in CONFIGS:
                s = cpu[name][label][size]
                cells.append(f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    share = cpu["graph"]["balanced centroid scoring"]["single"]["median"] / cpu["graph"]["balanced total"]["single"]["median"]
    lines += ["", "`balanced` scores the query against every class's centroids itself (one product with the centroid "
              "matrix, the same under both quantizers: a graph over all centroids does not give each class's nearest "
              f"lists); that is {share:.1%} of its CPU for a single query, the rest is the scan of 20 x 16 lists."]
    rec = r["recall_at_10"]
    lines += ["", f"Recall@10 against exact search: topk {rec['flat']['topk']} flat, {rec['graph']['topk']} graph; "
              f"balanced window {rec['flat']['balanced']} flat, {rec['graph']['balanced']} graph.", "",
              "Queries whose nprobe nearest lists are the same set under the graph as under the flat scan: "
              + ", ".join(f"nprobe {p}: {a}" for p, a in r["agreement"].items()) + ".", "",
              "Other list counts (centroids drawn from the pool's rows), CPU ms of the quantizer alone per query:", "",
              "| nlist | nprobe | build s | agreement | before single | flat single | graph single | "
              "before batch 32 | flat batch 32 | graph batch 32 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["sweep"]:
        cells = [f"{row[f'{name} ms {size}']['median']:.4f}" for size in ("single", f"batch {BATCH}") for name in CONFIGS]
        lines.append(f"| {row['nlist']} | {row['nprobe']} | {row['graph_build_s']} | {row['agreement']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
