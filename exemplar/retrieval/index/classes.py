"""Per-class indexes for ``balanced``: one small index per label.

Selecting the nearest items of every class with one filtered search over the whole pool per class
costs C full scans; one index per class costs about one scan of the pool in total, and with
inverted lists per class (own centroids, so a query far from a class still probes that class's
nearest lists) about what one global ``topk`` search costs.

Exact where the pool's index is exact: a version whose global index is ``Flat`` gets ``Flat``
class indexes. Otherwise classes of more than ``class_exact_max_bytes`` of vectors get
``IVF<n>,Flat`` with one nprobe for all of them, tuned on what a balanced query returns: the round
robin window over classes, against the same window from exact search.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from exemplar.retrieval.index.auto import AutoIndexPolicy, ivf_lists, reaches
from exemplar.retrieval.store.files import write_bytes_atomic
from exemplar.retrieval.index.roundrobin import interleave
from exemplar.retrieval.index.vectors import TUNED, Effort, VectorIndex

__all__ = ["NPROBES", "ClassIndexes", "ClassSearch", "RowsView", "class_rows", "round_robin", "search_each", "tune_class_nprobe"]

NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
META = "classes.json"
ROWS = "class_rows.npy"


class ClassSearch(Protocol):
    """What ``balanced`` needs of a segment's per-class search (``ClassIndexes``, ``PartitionedClasses``)."""

    rows: list[np.ndarray]
    stats: dict[str, Any]

    @property
    def approximate(self) -> list[int]: ...

    def search(self, code: int, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               effort: Effort = TUNED) -> tuple[np.ndarray, np.ndarray]: ...

    def search_many(self, codes: Sequence[int], queries: np.ndarray, k: int,
                    allowed: Mapping[int, np.ndarray] | None = None, *, needed: int | None = None,
                    effort: Effort = TUNED) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """``search`` for each of ``codes``; ``needed``: only the classes with the ``needed`` best
        items must be ranked in full (a window with one slot for each of them), the others only
        shown to rank below those; an implementation may search the others less deeply."""
        ...


def search_each(search: Callable[..., tuple[np.ndarray, np.ndarray]], codes: Sequence[int], queries: np.ndarray,
                k: int, allowed: Mapping[int, np.ndarray] | None, effort: Effort = TUNED
                ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``search_many`` as one ``search`` per class."""
    allowed = allowed or {}
    return {code: search(code, queries, k, allowed.get(code), effort) for code in dict.fromkeys(codes)}


class RowsView:
    """Rows of a larger matrix, gathered on indexing (so a class index can search exactly over a
    filtered subset of its class without holding its own copy of the vectors)."""

    def __init__(self, base: np.ndarray, rows: np.ndarray) -> None:
        self.base = base
        self.rows = rows

    def __getitem__(self, local: Any) -> np.ndarray:
        return np.asarray(self.base[self.rows[local]])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), int(self.base.shape[1])


def round_robin(per_class: list[list[tuple[int, float]]], stop: int) -> list[tuple[int, float]]:
    """Interleave per-class hit lists (each in score order), classes by their best score."""
    order = sorted((c for c in range(len(per_class)) if per_class[c]), key=lambda c: -per_class[c][0][1])
    return interleave(dict(enumerate(per_class)), order, stop)


def tune_class_nprobe(
    rows: Sequence[np.ndarray], search_many: Callable[..., dict[int, tuple[np.ndarray, np.ndarray]]],
    set_nprobe: Callable[[int], None], vectors: np.ndarray, policy: AutoIndexPolicy, *, searched: Sequence[int],
) -> dict[str, Any]:
    """The smallest nprobe (set through ``set_nprobe``) whose balanced window of ``recall_k`` (the
    round robin over classes) for sample pool items, each left out of its own answer, reaches the
    target recall against the same window from exact search. ``search_many(codes, queries, k,
    needed=...)`` answers for classes ``codes`` (global rows) as ``balanced`` asks, for a window of
    one item from each of its first ``recall_k`` classes when there are more classes than that;
    classes not in ``searched`` are exact and keep their exact answers."""
    rng = np.random.default_rng(policy.seed)
    n = len(vectors)
    sample = np.sort(rng.choice(n, size=min(policy.sample_queries, n), replace=False))
    queries = np.ascontiguousarray(vectors[sample], dtype=np.float32)
    k = policy.recall_k
    depth = k + 1  # the query item itself may come back first
    exact_hits = []
    for members in rows:
        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(np.ascontiguousarray(vectors[members], dtype=np.float32))
        D, local = flat.search(queries, min(depth, len(members)))
        exact_hits.append((D, members[local]))

    def windows(hits: list[tuple[np.ndarray, np.ndarray]]) -> list[set[int]]:
        out = []
        for q, row in enumerate(sample):
            lists = [[(int(i), float(d)) for d, i in zip(D[q], I[q]) if i >= 0 and i != row] for D, I in hits]
            out.append({r for r, _ in round_robin(lists, k)})
        return out

    truth = windows(exact_hits)
    best: tuple[int, float] = (1, 0.0)
    for nprobe in NPROBES:
        set_nprobe(nprobe)
        hits = list(exact_hits)
        found = search_many(list(searched), queries, depth, needed=k if k < len(rows) else None)
        for c in searched:
            hits[c] = found[c]
        got = windows(hits)
        trials = max(sum(len(t) for t in truth), 1)
        best = (nprobe, sum(len(g & t) for g, t in zip(got, truth)) / trials)
        if reaches(best[1], trials, policy.target_recall):
            break
    return {"nprobe": best[0], "recall_at_k": round(best[1], 4), "k": k, "queries": len(sample),
            "target_recall": policy.target_recall, "measure": "balanced window of k vs exact"}


def class_rows(label_codes: np.ndarray, n_labels: int) -> list[np.ndarray]:
    order = np.argsort(label_codes, kind="stable")
    sorted_codes = label_codes[order]
    bounds = np.searchsorted(sorted_codes, np.arange(n_labels + 1))
    return [np.sort(order[bounds[c] : bounds[c + 1]]).astype(np.int64) for c in range(n_labels)]


@dataclasses.dataclass
class ClassIndexes:
    """``rows[c]``: the global rows of label code ``c`` (ascending); ``indexes[c]`` indexes exactly
    those vectors, local id ``i`` standing for row ``rows[c][i]``."""

    rows: list[np.ndarray]
    indexes: list[VectorIndex]
    stats: dict[str, Any]

    @classmethod
    def build(
        cls, vectors: np.ndarray, label_codes: np.ndarray, n_labels: int, *, approximate: bool,
        policy: AutoIndexPolicy = AutoIndexPolicy(),
    ) -> "ClassIndexes":
        started = time.perf_counter()
        rows = class_rows(label_codes, n_labels)
        indexes = []
        for members in rows:
            data = np.ascontiguousarray(vectors[members], dtype=np.float32)
            if approximate and data.nbytes > policy.class_exact_max_bytes:
                # As many lists as the training sample supports (39 points per centroid, faiss's minimum).
                nlist = min(ivf_lists(len(members)), 2 ** int(np.log2(max(policy.class_train_points // 39, 16))))
                # Codes, not vectors: re-scored from the pool's mapped vectors through RowsView.
                index = VectorIndex.build(data, f"IVF{nlist},{policy.class_codes}",
                                          max_train_points=policy.class_train_points, seed=policy.seed)
                index.vectors = RowsView(vectors, members)
            else:
                index = VectorIndex.build(data, "Flat")
                index.vectors = None  # exact already; faiss holds the only copy it needs
            indexes.append(index)
        built = cls(rows, indexes, {})
        built.stats = {"classes": n_labels, "approximate": sum(not i.exact for i in indexes),
                       "build_s": round(time.perf_counter() - started, 3)}
        if built.stats["approximate"]:
            built.stats.update(built.tune(vectors, policy))
        return built

    @property
    def approximate(self) -> list[int]:
        return [c for c, index in enumerate(self.indexes) if not index.exact]

    def search(self, code: int, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               effort: Effort = TUNED) -> tuple[np.ndarray, np.ndarray]:
        """``D, I`` of the top ``k`` rows of class ``code`` (``allowed``: a mask over the class's
        rows); ``I`` holds global rows, ``-1`` where the class has fewer."""
        D, local = self.indexes[code].search(queries, k, allowed, effort)
        rows = self.rows[code]
        return D, np.where(local >= 0, rows[np.maximum(local, 0)], -1)

    def search_many(self, codes: Sequence[int], queries: np.ndarray, k: int,
                    allowed: Mapping[int, np.ndarray] | None = None, *, needed: int | None = None,
                    effort: Effort = TUNED) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return search_each(self.search, codes, queries, k, allowed, effort)

    def tune(self, vectors: np.ndarray, policy: AutoIndexPolicy) -> dict[str, Any]:
        """One nprobe for every approximate class (see ``tune_class_nprobe``)."""
        approximate = self.approximate

        def set_nprobe(nprobe: int) -> None:
            for c in approximate:
                ivf = faiss.extract_index_ivf(self.indexes[c].index)
                ivf.nprobe = min(nprobe, ivf.nlist)

        stats = tune_class_nprobe(self.rows, self.search_many, set_nprobe, vectors, policy, searched=approximate)
        for c in approximate:
            self.indexes[c].params = {"nprobe": faiss.extract_index_ivf(self.indexes[c].index).nprobe}
        return stats

    # persistence --------------------------------------------------------------------------------

    def save(self, folder: Path, labels: Sequence[str]) -> None:
        """Write under ``folder`` (a version's staging folder), keyed by label name."""
        folder.mkdir(parents=True, exist_ok=True)
        offsets = np.cumsum([0] + [len(r) for r in self.rows])
        np.save(folder / ROWS, np.concatenate(self.rows) if self.rows else np.empty(0, np.int64), allow_pickle=False)
        for c, index in enumerate(self.indexes):
            index.save(folder / f"{c}.faiss")
        meta = {"labels": list(labels), "offsets": offsets.tolist(), "stats": self.stats,
                "factories": [i.factory for i in self.indexes], "params": [i.params for i in self.indexes]}
        write_bytes_atomic(folder / META, json.dumps(meta).encode())

    @classmethod
    def load(cls, folder: Path, vectors: np.ndarray, labels: Sequence[str]) -> "ClassIndexes | None":
        """The saved indexes, re-keyed to ``labels`` (the snapshot's codes); None when absent."""
        if not (folder / META).is_file():
            return None
        meta = json.loads((folder / META).read_text())
        if sorted(meta["labels"]) != sorted(labels):
            return None
        all_rows = np.load(folder / ROWS, allow_pickle=False)
        offsets = meta["offsets"]
        saved = {name: c for c, name in enumerate(meta["labels"])}
        rows, indexes = [], []
        for name in labels:
            c = saved[name]
            members = all_rows[offsets[c] : offsets[c + 1]]
            index = VectorIndex.load(folder / f"{c}.faiss", meta["factories"][c], meta["params"][c])
            if not index.exact:
                index.vectors = RowsView(vectors, members)
            rows.append(members)
            indexes.append(index)
        return cls(rows, indexes, meta["stats"])
