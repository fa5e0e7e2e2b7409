"""One inverted-file index for ``topk`` and ``balanced`` alike: every inverted list holds one class.

A segment used to carry a global IVF (for ``topk``) and, beside it, one IVF per class (for
``balanced``): two sets of codes for the same rows, 0.13 x the raw vectors each at 1M x 512 with
4-bit codes. Here the coarse centroids are trained per class (k-means within each class, the
unlabelled rows as one more group) and each row goes to the nearest centroid *of its own class*, so
every list is pure in one class. The result is an ordinary faiss IVF, saved, memory-mapped and
searched as any other: ``topk`` probes the lists nearest the query whatever their class. For
``balanced``, class ``c`` is searched by scoring the query against that class's centroids only and
scanning its nearest ``nprobe`` lists (``search_preassigned``), so a class far from the query is
still probed where it is densest, as its own index did, without a second copy of the codes.

Candidates are re-scored exactly from the memory-mapped vectors (``rerank``), as ``VectorIndex``
does for lossy codes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from exemplar.retrieval.index.auto import AutoIndexPolicy, tune
from exemplar.retrieval.index.classes import META, ROWS, class_rows, tune_class_nprobe
from exemplar.retrieval.index.vectors import EXACT_SUBSET_ROWS, RERANK, VectorIndex, exact_scan, rerank, search_threads
from exemplar.retrieval.store.files import write_bytes_atomic

__all__ = ["KIND", "PartitionedClasses", "build_partitioned", "partitionable"]

KIND = "partitioned"
# IVF over codes; other factories (HNSW, IVF-Flat...) keep one index per class.
_FACTORY = re.compile(r"^IVF(\d+),(SQ\d+|SQfp16)$")
# k-means needs this many points per centroid (faiss warns below it).
_MIN_POINTS = 39


def partitionable(factory: str) -> bool:
    """Whether a segment index of ``factory`` is built partitioned by class."""
    return _FACTORY.match(factory) is not None


class PartitionedClasses:
    """Per-class search over a partitioned IVF: the interface ``balanced`` uses (``rows``,
    ``search``, ``approximate``, ``stats``), like ``ClassIndexes``. Class ``c`` has the lists
    ``spans[c, 0]`` up to ``spans[c, 1]`` and the rows ``rows[c]``, ascending."""

    def __init__(self, index: VectorIndex, vectors: Any, rows: list[np.ndarray], spans: np.ndarray,  # noqa: ANN401
                 nprobe: int, stats: dict[str, Any]) -> None:
        self.index = index
        self.vectors = vectors  # rows re-scored and exact subsets scanned from these
        self.rows = rows
        self.spans = spans
        self.nprobe = nprobe
        self.stats = stats
        self._ivf = faiss.extract_index_ivf(index.cpu_index)
        quantizer = faiss.downcast_index(self._ivf.quantizer)
        # A view of the centroids the quantizer holds (no copy); the index keeps them alive.
        self._centroids = faiss.rev_swig_ptr(quantizer.get_xb(), self._ivf.nlist * self._ivf.d).reshape(
            self._ivf.nlist, self._ivf.d)

    @property
    def approximate(self) -> list[int]:
        return list(range(len(self.rows)))

    def search(self, code: int, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """``D, I`` of the top ``k`` rows of class ``code`` (``allowed``: a mask over the class's
        rows); ``I`` holds the segment's rows, ``-1`` where the class has fewer."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        members = self.rows[code]
        count = len(members) if allowed is None else int(allowed.sum())
        k = max(1, k)
        if count == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if allowed is not None and count <= min(EXACT_SUBSET_ROWS, len(members) // 2):
            return exact_scan(self.vectors, q, k, members[allowed])
        D, I = self._probe(code, q, min(k * RERANK, count), allowed)
        D, I = rerank(self.vectors, q, I, k)
        # A filter can leave the probed lists short of rows the class still has elsewhere.
        short = np.flatnonzero((I >= 0).sum(axis=1) < min(k, count))
        if len(short):
            subset = members if allowed is None else members[allowed]
            D[short], I[short] = exact_scan(self.vectors, q[short], k, subset)
        return D, I

    def _probe(self, code: int, q: np.ndarray, wide: int, allowed: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray]:
        first, last = int(self.spans[code, 0]), int(self.spans[code, 1])
        nprobe = min(self.nprobe, last - first)
        scores = q @ self._centroids[first:last].T
        nearest = np.argpartition(-scores, nprobe - 1, axis=1)[:, :nprobe] if nprobe < last - first else \
            np.broadcast_to(np.arange(last - first), (len(q), nprobe))
        Dq = np.ascontiguousarray(np.take_along_axis(scores, nearest, axis=1), dtype=np.float32)
        Iq = np.ascontiguousarray(nearest + first, dtype=np.int64)
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        if allowed is not None:
            mask = np.zeros(self._ivf.ntotal, np.uint8)
            mask[self.rows[code][allowed]] = 1
            bitmap = np.packbits(mask, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        D = np.empty((len(q), wide), np.float32)
        I = np.empty((len(q), wide), np.int64)
        search_threads()
        self._ivf.search_preassigned_c(len(q), faiss.swig_ptr(q), wide, faiss.swig_ptr(Iq), faiss.swig_ptr(Dq),
                                       faiss.swig_ptr(D), faiss.swig_ptr(I), False, params)
        return D, I

    def tune(self, policy: AutoIndexPolicy) -> dict[str, Any]:
        def set_nprobe(nprobe: int) -> None:
            self.nprobe = nprobe

        return tune_class_nprobe(self.rows, self.search, set_nprobe, self.vectors, policy,
                                 searched=self.approximate)

    # persistence --------------------------------------------------------------------------------

    def save(self, folder: Path, labels: Sequence[str]) -> None:
        """Write the class metadata under ``folder``; the index itself is the segment's."""
        folder.mkdir(parents=True, exist_ok=True)
        offsets = np.cumsum([0] + [len(r) for r in self.rows])
        np.save(folder / ROWS, np.concatenate(self.rows) if self.rows else np.empty(0, np.int64), allow_pickle=False)
        meta = {"kind": KIND, "labels": list(labels), "offsets": offsets.tolist(), "spans": self.spans.tolist(),
                "nprobe": self.nprobe, "stats": self.stats}
        write_bytes_atomic(folder / META, json.dumps(meta).encode())

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any], index: VectorIndex, vectors: Any,  # noqa: ANN401
             labels: Sequence[str]) -> "PartitionedClasses":
        """The saved classes, re-keyed to ``labels`` (the snapshot's codes)."""
        all_rows = np.load(folder / ROWS, allow_pickle=False)
        offsets, spans = meta["offsets"], meta["spans"]
        saved = [meta["labels"].index(name) for name in labels]
        rows = [all_rows[offsets[c] : offsets[c + 1]] for c in saved]
        return cls(index, vectors, rows, np.asarray([spans[c] for c in saved], np.int64).reshape(-1, 2),
                   int(meta["nprobe"]), meta["stats"])


def build_partitioned(vectors: np.ndarray, label_codes: np.ndarray, n_labels: int, factory: str,
                      policy: AutoIndexPolicy = AutoIndexPolicy()) -> tuple[VectorIndex, PartitionedClasses, dict[str, Any]]:
    """Build ``factory`` (``IVF<n>,<codes>``) over ``vectors`` with lists pure in one class, tune
    its nprobe for ``topk`` and the per-class nprobe for ``balanced``; returns the index, its class
    view, and the index's stats (the classes' under ``"classes"``)."""
    match = _FACTORY.match(factory)
    if match is None:
        raise ValueError(f"{factory!r} is not an IVF over codes")
    started = time.perf_counter()
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = data.shape
    nlist = int(match.group(1))
    rows = class_rows(label_codes, n_labels)
    groups = rows + [np.flatnonzero(label_codes < 0).astype(np.int64)]
    centroids, spans, assign = [], [], np.empty(n, np.int64)
    first = 0
    for g, members in enumerate(groups):
        if not len(members):
            spans.append((first, first))
            continue
        # Lists in proportion to the group's share of the rows, as many as k-means can train.
        lists = max(1, min(round(nlist * len(members) / max(n, 1)), len(members) // _MIN_POINTS))
        block = _centroids(data[members], lists, seed=policy.seed + g)
        _, nearest = faiss.knn(data[members], block, 1, metric=faiss.METRIC_INNER_PRODUCT)
        assign[members] = nearest[:, 0] + first
        centroids.append(block)
        spans.append((first, first + len(block)))
        first += len(block)
    total = first
    built_factory = f"IVF{total},{match.group(2)}"
    index = faiss.index_factory(dim, built_factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.quantizer.add(np.vstack(centroids))
    # With the quantizer full, training only fits the codes (faiss skips k-means).
    sample = np.sort(np.random.default_rng(policy.seed).choice(n, size=min(n, 64 * 1024), replace=False))
    index.train(data[sample])
    ivf.add_core(n, faiss.swig_ptr(data), None, faiss.swig_ptr(assign))
    wrapped = VectorIndex(index, built_factory)
    wrapped.vectors = data
    build_s = time.perf_counter() - started
    stats = tune(wrapped, data, policy)
    classes = PartitionedClasses(wrapped, data, rows, np.asarray(spans[:n_labels], np.int64).reshape(-1, 2), 1, {})
    classes.stats = {"classes": n_labels, "kind": KIND, "lists": total, **classes.tune(policy)}
    stats.update({"requested": factory, "build_s": round(build_s, 3), "vectors": n})
    return wrapped, classes, stats


def _centroids(points: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    if k == 1:
        mean = points.mean(axis=0, keepdims=True)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
    kmeans = faiss.Kmeans(points.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False)
    kmeans.train(np.ascontiguousarray(points, dtype=np.float32))
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
