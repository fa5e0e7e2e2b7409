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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from exemplar.retrieval.index.auto import AutoIndexPolicy, tune
from exemplar.retrieval.index.classes import META, ROWS, class_rows, tune_class_nprobe
from exemplar.retrieval.index.quantizer import centroid_matrix
from exemplar.retrieval.index.vectors import (
    EXACT_SUBSET_ROWS,
    RERANK,
    TUNED,
    Effort,
    VectorIndex,
    exact_scan,
    rerank,
    search_threads,
)
from exemplar.retrieval.store.files import write_bytes_atomic

__all__ = ["KIND", "PartitionedClasses", "build_partitioned", "partitionable"]

KIND = "partitioned"
# IVF over codes; other factories (HNSW, IVF-Flat...) keep one index per class.
_FACTORY = re.compile(r"^IVF(\d+),(SQ\d+|SQfp16)$")
# k-means needs this many points per centroid (faiss warns below it).
_MIN_POINTS = 39
# balanced's second pass takes at least this many classes beyond those its window needs: small
# windows (k of 1 to 4) would otherwise have a margin of one or two classes, and tuning measures 10.
_MARGIN = 4
# Candidates re-scored per (query, class), at least: ``balanced`` asks each class for one or two
# items, and with ``k * RERANK`` the tuning (which asks for one more, its queries being pool items)
# re-scored twice what serving did, so held-out queries missed the tuned recall (0.951 against
# 0.963 tuned on Zipf-sized classes; 0.959 with this floor, ``balanced_distributions.py``).
_CANDIDATES = 2 * RERANK


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
        width = int((spans[:, 1] - spans[:, 0]).max()) if len(spans) else 0
        self._lists = np.full((len(spans), max(width, 1)), -1, np.int64)
        for c, (first, last) in enumerate(spans):
            self._lists[c, : last - first] = np.arange(first, last)
        self._ivf = faiss.extract_index_ivf(index.cpu_index)
        # A view of the centroids the quantizer holds, flat or graph (no copy); the index keeps them alive.
        self._centroids = centroid_matrix(self._ivf)

    @property
    def approximate(self) -> list[int]:
        return list(range(len(self.rows)))

    def search(self, code: int, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               effort: Effort = TUNED) -> tuple[np.ndarray, np.ndarray]:
        """``D, I`` of the top ``k`` rows of class ``code`` (``allowed``: a mask over the class's
        rows); ``I`` holds the segment's rows, ``-1`` where the class has fewer."""
        return self.search_many([code], queries, k, {code: allowed} if allowed is not None else None,
                                effort=effort)[code]

    def search_many(self, codes: Sequence[int], queries: np.ndarray, k: int,
                    allowed: Mapping[int, np.ndarray] | None = None, *, needed: int | None = None,
                    effort: Effort = TUNED) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """``search`` for several classes in one faiss call: each (query, class) pair is one row of
        a preassigned search whose probes are that class's nearest lists.

        ``needed``: only the ``needed`` classes whose best items score highest need their ranking in
        full (a ``balanced`` window that gives one slot to each of its first classes). All classes
        are then scanned shallowly first (a quarter of their lists), and only the ``needed`` best of
        them plus half as many again (at least 4 more), per query, are scanned to the full depth; the others keep
        their shallow answers, which rank them below the window. Tuning measures the window with
        this in place (``tune``)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, k)
        allowed = allowed or {}
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        probed: list[int] = []
        for code in dict.fromkeys(codes):
            members, mask = self.rows[code], allowed.get(code)
            count = len(members) if mask is None else int(mask.sum())
            if count == 0:
                out[code] = (np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64))
            elif effort.exact or (mask is not None and count <= min(EXACT_SUBSET_ROWS, len(members) // 2)):
                out[code] = exact_scan(self.vectors, q, k, members if mask is None else members[mask])
            else:
                probed.append(code)
        if probed:
            D, I = self._probe(probed, q, k, allowed, needed, effort)
            for j, code in enumerate(probed):
                out[code] = self._complete(code, q, k, allowed.get(code), D[:, j], I[:, j])
        return out

    def _probe(self, codes: list[int], q: np.ndarray, k: int, allowed: Mapping[int, np.ndarray],
               needed: int | None, effort: Effort) -> tuple[np.ndarray, np.ndarray]:
        """``D, I`` of shape (queries, classes, k): candidates from each class's nearest lists,
        re-scored exactly."""
        nq, m = len(q), len(codes)
        lists = self._lists[codes]  # (m, width): the classes' list ids, -1 past a class's last
        width = lists.shape[1]
        nprobe = effort.lists(self.nprobe, width)
        scores = np.where(lists >= 0, (q @ self._centroids.T)[:, np.maximum(lists, 0)], -np.inf)  # (nq, m, width)
        if nprobe < width:
            nearest = np.argpartition(-scores, nprobe - 1, axis=2)[:, :, :nprobe]
        else:
            nearest = np.broadcast_to(np.arange(width), (nq, m, width))
        Dq = np.take_along_axis(scores, nearest, axis=2)
        Iq = np.take_along_axis(np.broadcast_to(lists, (nq, m, width)), nearest, axis=2)
        order = np.argsort(-Dq, axis=2, kind="stable")  # each class's lists, nearest first
        Dq, Iq = np.take_along_axis(Dq, order, axis=2), np.take_along_axis(Iq, order, axis=2)
        Iq = np.where(np.isfinite(Dq), Iq, -1)
        Dq = np.where(np.isfinite(Dq), Dq, 0).astype(np.float32)
        wide = max(k, min(max(k * RERANK, _CANDIDATES), max(len(self.rows[c]) for c in codes)))
        params, _bitmap = self._params(codes, allowed)  # the selector points into the bitmap: keep it alive
        pairs = np.repeat(np.arange(nq), m)
        shallow = max(1, nprobe // 4)
        deep = m if needed is None else min(m, needed + max(-(-needed // 2), _MARGIN))
        if deep >= m or shallow >= nprobe:
            D, I = self._scan(q[pairs], Iq.reshape(nq * m, nprobe), Dq.reshape(nq * m, nprobe), wide, k, params)
            return D.reshape(nq, m, -1), I.reshape(nq, m, -1)
        D, I = self._scan(q[pairs], Iq[:, :, :shallow].reshape(nq * m, shallow),
                          Dq[:, :, :shallow].reshape(nq * m, shallow), wide, k, params)
        D, I = D.reshape(nq, m, -1), I.reshape(nq, m, -1)
        # The classes each query ranks highest after the shallow pass get the rest of their lists.
        top = np.argpartition(-D[:, :, 0], deep - 1, axis=1)[:, :deep]
        rows, cols = np.repeat(np.arange(nq), deep), top.reshape(-1)
        D2, I2 = self._scan(q[rows], np.ascontiguousarray(Iq[rows, cols, shallow:]),
                            np.ascontiguousarray(Dq[rows, cols, shallow:]), wide, k, params)
        # Both passes are re-scored exactly and their lists are disjoint: the best k of the union.
        Du, Iu = np.hstack([D[rows, cols], D2]), np.hstack([I[rows, cols], I2])
        best = np.argsort(-Du, axis=1, kind="stable")[:, : D.shape[2]]
        D[rows, cols], I[rows, cols] = np.take_along_axis(Du, best, axis=1), np.take_along_axis(Iu, best, axis=1)
        return D, I

    def _params(self, codes: list[int], allowed: Mapping[int, np.ndarray]
                ) -> tuple[faiss.SearchParametersIVF, np.ndarray | None]:
        params = faiss.SearchParametersIVF()
        bitmap = None
        if any(code in allowed for code in codes):
            # Lists are pure in one class, so one bitmap serves every class searched.
            mask = np.zeros(self._ivf.ntotal, np.uint8)
            for code in codes:
                rows = self.rows[code]
                mask[rows if code not in allowed else rows[allowed[code]]] = 1
            bitmap = np.packbits(mask, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        return params, bitmap

    def _scan(self, q: np.ndarray, Iq: np.ndarray, Dq: np.ndarray, wide: int, k: int,
              params: faiss.SearchParametersIVF) -> tuple[np.ndarray, np.ndarray]:
        """One preassigned search: row ``i`` of ``q`` scans lists ``Iq[i]`` (``-1``: none); the
        best ``wide`` by their codes, re-scored exactly, the best ``k`` kept."""
        rows, probes = Iq.shape
        q = np.ascontiguousarray(q, dtype=np.float32)
        Iq = np.ascontiguousarray(Iq, dtype=np.int64)
        Dq = np.ascontiguousarray(Dq, dtype=np.float32)
        params.nprobe = probes
        D = np.empty((rows, wide), np.float32)
        I = np.empty((rows, wide), np.int64)
        search_threads(rows)
        self._ivf.search_preassigned_c(rows, faiss.swig_ptr(q), wide, faiss.swig_ptr(Iq), faiss.swig_ptr(Dq),
                                       faiss.swig_ptr(D), faiss.swig_ptr(I), False, params)
        return rerank(self.vectors, q, I, k)

    def _complete(self, code: int, q: np.ndarray, k: int, mask: np.ndarray | None, D: np.ndarray, I: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Pad to ``k`` columns; a filter can leave the probed lists short of rows the class still
        has elsewhere, and those queries are answered exactly over the allowed rows."""
        if D.shape[1] < k:
            pad = k - D.shape[1]
            D = np.hstack([D, np.full((len(q), pad), -np.inf, np.float32)])
            I = np.hstack([I, np.full((len(q), pad), -1, np.int64)])
        members = self.rows[code]
        count = len(members) if mask is None else int(mask.sum())
        short = np.flatnonzero((I >= 0).sum(axis=1) < min(k, count))
        if len(short):
            D, I = D.copy(), I.copy()
            D[short], I[short] = exact_scan(self.vectors, q[short], k, members if mask is None else members[mask])
        return D, I

    def tune(self, policy: AutoIndexPolicy) -> dict[str, Any]:
        def set_nprobe(nprobe: int) -> None:
            self.nprobe = nprobe

        return tune_class_nprobe(self.rows, self.search_many, set_nprobe, self.vectors, policy,
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
