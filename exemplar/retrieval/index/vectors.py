"""A FAISS index over L2-normalised vectors, searched by inner product (cosine similarity)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from exemplar.errors import Incompatible, InvalidRequest
from exemplar.retrieval.index.batching import SearchBatcher
from exemplar.retrieval.index.quantizer import flat_quantizer, install_graph, quantizer_params
from exemplar.retrieval.store.files import write_bytes_atomic

__all__ = [
    "BLAS_MIN_QUERIES",
    "DEFAULT_INDEX",
    "EXACT_SUBSET_ROWS",
    "Effort",
    "RERANK",
    "VectorIndex",
    "blas_threshold",
    "exact_scan",
    "gpu_available",
    "normalize",
    "rerank",
    "search_threads",
    "searching",
    "set_search_threads",
]

log = logging.getLogger(__name__)

DEFAULT_INDEX = "Flat"
AUTO = "auto"
# Filters leaving at most this many rows are searched exactly over those rows on ANN indexes.
EXACT_SUBSET_ROWS = 50_000
# An index over compressed codes (SQ, PQ) only ranks candidates: this many per result are taken
# from it and re-scored exactly against the memory-mapped vectors, so the index never holds a
# second full-precision copy of them and the scores returned are exact.
RERANK = 10

# Flat scans (an IVF's flat coarse quantizer, Flat indexes, exact subsets) go through BLAS from this
# many queries a call: batched searches of a few dozen queries are 2 to 6 times faster through BLAS,
# and a query or two are 4 to 6 times slower (BLAS for one query: 0.72-0.96 ms of CPU over 4,095 x
# 512 centroids, against 0.16 ms without; measured with benchmarks/quantizer.py's data, one core).
BLAS_MIN_QUERIES = 8
# The dimension the threshold is set for where faiss counts query rows x dimension.
_BLAS_DIM = 512


def blas_threshold(default: int) -> int:
    """``distance_compute_blas_threshold`` for BLAS from ``BLAS_MIN_QUERIES`` queries. faiss compares
    it with the query rows in releases whose default is 20, and with rows x dimension in those whose
    default is 128,000 (250 queries of 512 floats, faiss 1.15); there, a value counted in queries
    (the 16 set here before) sends every search, one query too, through BLAS."""
    return BLAS_MIN_QUERIES * _BLAS_DIM if default >= 1000 else BLAS_MIN_QUERIES


faiss.cvar.distance_compute_blas_threshold = blas_threshold(faiss.cvar.distance_compute_blas_threshold)


@dataclasses.dataclass(frozen=True)
class Effort:
    """How hard one search looks: the settings tuned at build time to the recall target (the
    default), ``scale`` times their probes (IVF nprobe, HNSW efSearch; ``balanced``'s per-class
    nprobe), a fixed ``nprobe`` (lists, on IVF indexes), or an ``exact`` scan of the vectors."""

    exact: bool = False
    scale: float = 1.0
    nprobe: int | None = None

    @property
    def tuned(self) -> bool:
        return not self.exact and self.scale == 1.0 and self.nprobe is None

    def lists(self, tuned: int, nlist: int) -> int:
        """Inverted lists to probe where the tuned setting is ``tuned`` of ``nlist``."""
        want = self.nprobe if self.nprobe is not None else round(tuned * self.scale)
        return max(1, min(nlist, want))

    def ef(self, tuned: int, k: int) -> int:
        """An HNSW efSearch (``nprobe`` does not apply to graphs); at least ``k``."""
        return max(k, round(tuned * self.scale))


TUNED = Effort()

_search_threads = 0
_cores = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
_share = _cores  # the cores a lone search may use in this process
_in_flight = 0
_PARALLEL_ROWS = 8
_in_flight_lock = threading.Lock()


def set_search_threads(threads: int, *, processes: int = 1) -> None:
    """OpenMP threads per search; 0 (the default) adapts: the process's share of the cores (all of
    them, or ``cores // processes`` when ``processes`` server processes share the machine) for a
    search over many rows that runs alone, one thread otherwise. OpenMP keeps this per calling
    thread, so each search sets it in the thread that runs it: concurrent request threads that each
    started a team of one thread per core would oversubscribe the cores."""
    global _search_threads, _share
    _search_threads = max(0, int(threads))
    _share = max(1, _cores // max(1, int(processes)))


@contextlib.contextmanager
def searching() -> Iterator[None]:
    """Count a search (a request's whole selection, say) as in flight while the block runs, so that
    ``search_threads`` knows whether it runs alone."""
    global _in_flight
    with _in_flight_lock:
        _in_flight += 1
    try:
        yield
    finally:
        with _in_flight_lock:
            _in_flight -= 1


def search_threads(rows: int = 1) -> int:
    """Apply ``set_search_threads`` in the calling thread before a faiss call over ``rows`` query
    rows (queries, or query x class pairs); returns the threads set.

    A lone search over many rows (a ``balanced`` request's classes, a batch, a build's tuning) gets
    every core: faiss splits the rows over them. A search over a row or two stays on one thread,
    as do overlapping searches: a team of threads costs more to wake than such a search takes
    (measured: one IVF query, 0.19 ms of CPU on one thread, 0.5 to 0.9 ms on two), and
    overlapping searches already keep the cores busy."""
    alone = _in_flight <= 1 and rows >= _PARALLEL_ROWS
    threads = _search_threads or (_share if alone else 1)
    faiss.omp_set_num_threads(threads)
    return threads


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit length (callers reject zero rows first)."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, np.finfo(np.float32).tiny)


class VectorIndex:
    """Wraps a faiss index; ``search`` returns ``D, I`` like faiss, with an optional row filter."""

    def __init__(self, index: faiss.Index, factory: str) -> None:
        self.index = index
        self.factory = factory
        self.params: dict[str, int] = {}  # search-time parameters (nprobe, efSearch) set by tuning
        self.on_gpu = False
        # Filtered searches (IDSelector) are a CPU feature in faiss; the CPU index stays for them.
        self._cpu_index = index
        # The raw vectors (row i = id i), for exact search over a filtered subset of an ANN index.
        self.vectors: Any = None  # an array, or anything that gathers rows with [rows]
        self._gpu_lock = threading.Lock()
        # Concurrent unfiltered searches share FAISS calls (see batching.py).
        self.batcher = SearchBatcher(lambda q, k: self.index.search(q, k))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, factory: str = DEFAULT_INDEX, *, max_train_points: int | None = None,
              seed: int = 0) -> "VectorIndex":
        """Build the faiss index described by ``factory`` over ``vectors`` (trained on a seeded
        sample of at most ``max_train_points`` of them when given)."""
        n, dim = vectors.shape
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise InvalidRequest(f"invalid faiss index factory string {factory!r}", param="index") from exc
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        if not index.is_trained:
            try:
                train = data
                if max_train_points is not None and n > max_train_points:
                    rows = np.sort(np.random.default_rng(seed).choice(n, size=max_train_points, replace=False))
                    train = data[rows]
                index.train(train)
            except RuntimeError as exc:
                raise Incompatible(
                    f"index {factory!r} cannot be trained on {n} vectors; use 'Flat' for small pools",
                    param="index",
                ) from exc
        if n:
            index.add(data)
        built = cls(index, factory)
        built.vectors = data
        return built

    def save(self, path: Path) -> None:
        with flat_quantizer(self._cpu_index) as index:  # the format it was read in (see quantizer.py)
            write_bytes_atomic(path, faiss.serialize_index(index).tobytes())

    @classmethod
    def load(cls, path: Path, factory: str, params: dict[str, int] | None = None) -> "VectorIndex":
        if factory.startswith("IVF"):
            # The inverted lists stay in the file, mapped: start-up reads nothing it does not search,
            # and every process serving the pool shares one copy in the page cache.
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        else:
            index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
        loaded = cls(index, factory)
        if params:
            for name, value in params.items():
                faiss.ParameterSpace().set_index_parameter(loaded.index, name, value)
            loaded.params = dict(params)
        # After nprobe is set: the graph's efSearch follows it.
        install_graph(loaded.index)
        return loaded

    def to_gpu(self, device: int = 0) -> bool:
        """Move the index to a GPU when faiss has GPU support and one is present."""
        if self.on_gpu or not gpu_available():
            return self.on_gpu
        with self._gpu_lock:
            resources = faiss.StandardGpuResources()
            # faiss copies only flat coarse quantizers to the GPU, where the flat scan is cheap anyway
            with flat_quantizer(self.index) as cpu:
                self.index = faiss.index_cpu_to_gpu(resources, device, cpu)
            self._resources = resources
            self.on_gpu = True
        return True

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, effort: Effort = TUNED
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows per query among ``allowed`` rows (a boolean mask over rows), as hard as
        ``effort`` says (``exact``: a scan of the vectors, on any index that keeps them).

        Missing results (fewer allowed rows than ``k``) have ``I == -1``.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self.ntotal))
        search_threads(len(q))
        if self.ntotal == 0:
            return np.full((len(q), 1), -np.inf, np.float32), np.full((len(q), 1), -1, np.int64)
        if effort.exact and not self.exact and self.vectors is not None:
            return exact_scan(self.vectors, q, k, None if allowed is None else np.flatnonzero(allowed))
        if self.reranks:
            wide = min(k * RERANK, self.ntotal)
            D, I = self._search(q, wide, allowed, effort)
            return rerank(self.vectors, q, I, k)
        return self._search(q, k, allowed, effort)

    @property
    def reranks(self) -> bool:
        """Whether results are re-scored from the vectors (an index over lossy codes)."""
        return self.vectors is not None and _lossy(self.factory)

    @property
    def cpu_index(self) -> faiss.Index:
        """The index on the CPU (the same object unless ``to_gpu`` moved a copy to a GPU)."""
        return self._cpu_index

    def _search(self, q: np.ndarray, k: int, allowed: np.ndarray | None, effort: Effort
                ) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:
            if effort.tuned:
                return self.batcher.search(q, k)
            # another depth than the tuned one: its own call, not batched with tuned searches
            return self._cpu_index.search(q, k, params=self._params(None, effort, k))
        count = int(allowed.sum())
        # A small subset is searched exactly; a filter that keeps most rows (say, a few exclusions)
        # leaves the inverted lists or graph near the query well populated, so the index serves it.
        if not self.exact and self.vectors is not None and count <= min(EXACT_SUBSET_ROWS, self.ntotal // 2):
            return self._exact_subset(q, k, allowed)
        bitmap = np.packbits(allowed.astype(np.uint8), bitorder="little")
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        D, I = self._cpu_index.search(q, k, params=self._params(selector, effort, k))
        if not self.exact and self.vectors is not None:
            # A graph or an inverted list explored near the query can miss a filtered subset that lies
            # far from it; those queries are answered exactly over the subset instead.
            need = min(k, count)
            short = np.flatnonzero((I >= 0).sum(axis=1) < need)
            if len(short):
                D[short], I[short] = self._exact_subset(q[short], k, allowed)
        return D, I

    @property
    def exact(self) -> bool:
        return isinstance(faiss.downcast_index(self._cpu_index), faiss.IndexFlat)

    def _exact_subset(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return exact_scan(self.vectors, q, k, np.flatnonzero(allowed))

    def _params(self, selector: faiss.IDSelector | None, effort: Effort = TUNED, k: int = 1) -> faiss.SearchParameters:
        ivf = faiss.try_extract_index_ivf(self._cpu_index)
        if ivf is not None:
            nprobe = effort.lists(ivf.nprobe, ivf.nlist)
            return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe, quantizer_params=quantizer_params(ivf, nprobe))
        hnsw = getattr(faiss.downcast_index(self._cpu_index), "hnsw", None)
        if hnsw is not None:
            return faiss.SearchParametersHNSW(sel=selector, efSearch=effort.ef(hnsw.efSearch, k))
        return faiss.SearchParameters(sel=selector)


def exact_scan(vectors: Any, queries: np.ndarray, k: int, rows: np.ndarray | None = None  # noqa: ANN401 - rows gather
               ) -> tuple[np.ndarray, np.ndarray]:
    """``D, I`` of exact inner-product search over ``vectors`` (or only ``rows`` of it), ``I`` in
    row numbers of ``vectors``, padded with ``-1``/``-inf`` to ``k``."""
    n = len(vectors) if rows is None else len(rows)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(k, 1)
    if n == 0:
        return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
    search_threads(len(q))
    data = vectors if rows is None else vectors[rows]
    D, I = faiss.knn(q, np.ascontiguousarray(data, dtype=np.float32), min(k, n), metric=faiss.METRIC_INNER_PRODUCT)
    if rows is not None:
        I = np.where(I >= 0, rows[np.maximum(I, 0)], -1)
    if I.shape[1] < k:
        pad = k - I.shape[1]
        D = np.hstack([D, np.full((len(q), pad), -np.inf, np.float32)])
        I = np.hstack([I, np.full((len(q), pad), -1, np.int64)])
    return D, I


def rerank(vectors: Any, q: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN401
    """The best ``k`` of candidate rows ``I`` (``-1``: none) re-scored exactly against ``vectors``."""
    candidates = np.maximum(I, 0)
    gathered = np.asarray(vectors[candidates.reshape(-1)], dtype=np.float32).reshape(*I.shape, -1)
    scores = np.einsum("qkd,qd->qk", gathered, q)
    scores = np.where(I >= 0, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    D, I = np.take_along_axis(scores, order, axis=1), np.take_along_axis(I, order, axis=1)
    return D, np.where(np.isfinite(D), I, -1)


def _lossy(factory: str) -> bool:
    """Whether a faiss factory stores compressed codes rather than the vectors (SQ, PQ...)."""
    storage = factory.split(",")[-1]
    return storage.startswith(("SQ", "PQ", "RQ", "LSQ")) or "PQ" in storage
