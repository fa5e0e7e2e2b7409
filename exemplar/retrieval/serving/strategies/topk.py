"""``topk`` (TopKNearestPR / RICES): the globally nearest items."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies.base import Pick, SelectionOptions, Window, refuse_k_per_class, register_strategy

__all__ = ["TopK", "ranked_hits"]


def ranked_hits(D: np.ndarray, I: np.ndarray, skip: int | None) -> list[tuple[int, float]]:
    """One query's ``(row, score)`` hits in score order, without padding and without ``skip``."""
    return [(int(i), float(d)) for d, i in zip(D, I) if i >= 0 and i != skip]


class TopK:
    name = "topk"
    description = "The k items nearest to the query overall (TopKNearestPR, RICES)."
    needs_query = True
    takes_k_per_class = False
    per_class_note = ""
    Params = None

    def per_class(self, options: SelectionOptions) -> bool:
        return False

    def space(self, snap: Snapshot) -> Snapshot:
        return snap

    def check(self, options: SelectionOptions) -> None:
        refuse_k_per_class(self.name, options, "it selects the k nearest items overall; per-class quotas are "
                                               "strategy 'balanced'")

    def select(
        self,
        snap: Snapshot,
        queries: np.ndarray | None,
        self_rows: Sequence[int | None],
        allowed: np.ndarray | None,
        options: SelectionOptions,
    ) -> list[Window]:
        if queries is None or options.k is None:
            raise ValueError("topk needs query vectors and k")
        depth = options.offset + options.k + (1 if any(r is not None for r in self_rows) else 0)
        D, I = snap.index.search(queries, depth, allowed, options.effort)
        out = []
        for q, skip in enumerate(self_rows):
            hits = ranked_hits(D[q], I[q], skip)[options.offset : options.offset + options.k]
            out.append(Window([Pick(row, score, options.offset + i) for i, (row, score) in enumerate(hits)]))
        return out


register_strategy(TopK)
