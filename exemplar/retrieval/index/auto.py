"""``index: "auto"``: pick Flat, HNSW, IVF-Flat or IVF-PQ from the pool's size and a memory budget
(after autofaiss's rules of thumb), tune nprobe / efSearch to reach a recall target within a latency
budget, and measure recall@k against exact search on a held-out sample of queries."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import faiss
import numpy as np

from exemplar.retrieval.index.quantizer import follow_nprobe
from exemplar.retrieval.index.vectors import AUTO, VectorIndex

__all__ = ["AutoIndexPolicy", "build_index", "choose_factory", "ivf_lists", "measure_recall", "reaches", "tune"]


@dataclasses.dataclass(frozen=True)
class AutoIndexPolicy:
    memory_budget_bytes: int = 8 * 1024**3
    # Exact search has recall 1 but scans every vector: about 6 GB/s on one core here, so 32 MiB of
    # vectors (16k x 512 floats) is about 5 ms a query; beyond that an approximate index pays.
    exact_max_bytes: int = 32 * 1024**2
    # HNSW32 below this many rows (0: never). The class-partitioned IVF-SQ4 that larger pools get
    # answers topk about as fast (0.19 against 0.14 ms of CPU a query at 50k x 512) and balanced in
    # one pass over all classes (3.7 against 6.8 ms), with an eighth of the vectors' memory where
    # HNSW32 holds a full copy and its graph.
    hnsw_below: int = 0
    target_recall: float = 0.95
    latency_budget_ms: float = 10.0
    recall_k: int = 10
    sample_queries: int = 200
    seed: int = 0
    # per-class indexes (balanced): classes this large get inverted lists, trained on a sample
    class_exact_max_bytes: int = 1024**2
    class_train_points: int = 64 * 256
    class_codes: str = "SQ4"  # what the per-class inverted lists store (re-scored exactly)
    # A segment beside the pool's large one (an addition, a compaction's merge) is scanned exactly
    # on every query: from this many rows it gets a small index of its own instead.
    segment_index_rows: int = 4096


def reaches(recall: float, trials: int, target: float) -> bool:
    """Whether a recall measured over ``trials`` neighbours reaches ``target`` with 95% confidence.
    Tuning on a sample stops at the first setting that reaches it, so a plain ``recall >= target``
    picks settings that new queries miss about half the time (0.9525 measured at 1M, target 0.95)."""
    return recall - 1.96 * math.sqrt(max(recall * (1 - recall), 0.0) / max(trials, 1)) >= target


def ivf_lists(n: int) -> int:
    # about 4 * sqrt(n) lists, a power of two, and at least 39 training points per list
    nlist = 2 ** max(4, round(math.log2(4 * math.sqrt(n))))
    return max(16, min(nlist, n // 39))


def choose_factory(n: int, dim: int, policy: AutoIndexPolicy = AutoIndexPolicy()) -> str:
    flat_bytes = n * dim * 4
    if flat_bytes <= min(policy.exact_max_bytes, policy.memory_budget_bytes):
        return "Flat"
    if flat_bytes * 1.3 <= policy.memory_budget_bytes:
        if n < policy.hnsw_below:
            return "HNSW32"
        # 4-bit codes in the lists (an eighth of the vectors' bytes), candidates re-scored exactly
        # from the memory-mapped vectors (``VectorIndex.reranks``): one full copy of the vectors;
        # partitioned by class where the rows are labelled (``partitioned.py``).
        return f"IVF{ivf_lists(n)},SQ4"
    # Compress: PQ with the largest number of sub-quantisers that fits, dividing the dimension.
    m = max((m for m in range(1, dim + 1) if dim % m == 0 and m <= 64 and n * (m + 8) <= policy.memory_budget_bytes),
            default=1)
    return f"IVF{ivf_lists(n)},PQ{m}"


def _set(index: faiss.Index, name: str, value: int) -> None:
    faiss.ParameterSpace().set_index_parameter(index, name, value)
    if name == "nprobe":
        follow_nprobe(index)  # a graph quantizer searches deeper for more lists


def _search_params(index: faiss.Index) -> tuple[str, list[int]] | None:
    if faiss.try_extract_index_ivf(index) is not None:
        nlist = faiss.extract_index_ivf(index).nlist
        return "nprobe", [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p <= nlist]
    if hasattr(faiss.downcast_index(index), "hnsw"):
        return "efSearch", [16, 32, 64, 128, 256, 512]
    return None


def measure_recall(index: VectorIndex, vectors: np.ndarray, rows: np.ndarray, k: int) -> tuple[float, float]:
    """``(recall@k, mean ms per query)`` of ``index`` against exact search over ``vectors``, for the
    stored vectors ``rows`` used as queries with themselves left out of both answers: the neighbours
    a new query near those items would have, not the trivial match with itself."""
    queries = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, I_ref = exact.search(queries, k + 1)
    started = time.perf_counter()
    for q in queries:  # one at a time, as the hot path asks (re-scoring included)
        index.search(q[None, :], k + 1)
    per_query = (time.perf_counter() - started) * 1000 / len(queries)
    _, I = index.search(queries, k + 1)
    hits = 0
    for row, found, truth in zip(rows, I, I_ref):
        want = [t for t in truth if t != row][:k]
        got = [f for f in found if f >= 0 and f != row][:k]
        hits += len(set(got) & set(want))
    return hits / (len(rows) * k), per_query


def tune(index: VectorIndex, vectors: np.ndarray, policy: AutoIndexPolicy = AutoIndexPolicy()) -> dict[str, Any]:
    """Set the smallest nprobe / efSearch whose recall@k reaches the target (or the best within the
    latency budget); returns what was measured, for the version's stats."""
    n = len(vectors)
    k = max(1, min(policy.recall_k, n))
    if n == 0:
        return {"factory": index.factory, "recall_at_k": None, "k": k, "params": {}}
    rng = np.random.default_rng(policy.seed)
    sample = np.sort(rng.choice(n, size=min(policy.sample_queries, n), replace=False))
    k = max(1, min(k, n - 1))
    knob = _search_params(index.index)
    params: dict[str, int] = {}
    if knob is None:
        recall, latency = measure_recall(index, vectors, sample, k)
    else:
        name, values = knob
        best = None
        for value in values:
            _set(index.index, name, value)
            recall, latency = measure_recall(index, vectors, sample, k)
            if latency > policy.latency_budget_ms and best is not None:
                break
            best = (value, recall, latency)
            if reaches(recall, len(sample) * k, policy.target_recall):
                break
        assert best is not None
        value, recall, latency = best
        _set(index.index, name, value)
        params[name] = value
    index.params = params
    return {"factory": index.factory, "k": k, "recall_at_k": round(recall, 4), "latency_ms": round(latency, 4),
            "queries": len(sample), "params": params, "target_recall": policy.target_recall}


def apply_params(index: faiss.Index, params: dict[str, int]) -> None:
    for name, value in params.items():
        _set(index, name, value)


def build_index(vectors: np.ndarray, spec: str, policy: AutoIndexPolicy = AutoIndexPolicy()) -> tuple[VectorIndex, dict[str, Any]]:
    """Build ``spec`` (``auto``: chosen by ``choose_factory``); approximate indexes are tuned and their
    recall@k measured. Returns the index and what to record in the version's stats."""
    n, dim = vectors.shape
    factory = choose_factory(n, dim, policy) if spec == AUTO else spec
    started = time.perf_counter()
    index = VectorIndex.build(vectors, factory)
    build_s = time.perf_counter() - started
    if _search_params(index.index) is None and factory == "Flat":
        stats: dict[str, Any] = {"factory": factory, "recall_at_k": 1.0, "k": min(policy.recall_k, max(n, 1)),
                                 "params": {}, "exact": True}
    else:
        stats = tune(index, vectors, policy)
    stats.update({"requested": spec, "build_s": round(build_s, 3), "vectors": n})
    return index, stats
