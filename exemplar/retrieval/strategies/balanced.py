"""``balanced``: nearest items per class with exact per-class quotas.

The ranking is a round robin over the classes, ordered by each class's best similarity to the query:
the best of every class, then the second best of every class, and so on; a class that runs out is
skipped. A window of ``k`` therefore gives each of ``C`` classes ``k // C`` items and the ``k % C``
classes most similar to the query one more; ``k_per_class = m`` is the window ``k = m * C``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from exemplar.errors import EmptyPool
from exemplar.retrieval.snapshot import Snapshot
from exemplar.retrieval.strategies.base import Pick, SelectionOptions, register_strategy
from exemplar.retrieval.strategies.topk import ranked_hits

__all__ = ["Balanced", "round_robin", "window_size"]


def window_size(options: SelectionOptions, n_classes: int) -> int:
    if options.k_per_class is not None:
        return options.k_per_class * n_classes
    assert options.k is not None
    return options.k


def round_robin(per_class: list[list[tuple[int, float]]], stop: int) -> list[tuple[int, float]]:
    """Interleave per-class hit lists (each in score order), classes by their best score."""
    order = sorted(
        (c for c in range(len(per_class)) if per_class[c]),
        key=lambda c: -per_class[c][0][1],
    )
    out: list[tuple[int, float]] = []
    depth = 0
    while len(out) < stop:
        emitted = False
        for c in order:
            if depth < len(per_class[c]):
                out.append(per_class[c][depth])
                emitted = True
                if len(out) == stop:
                    break
        if not emitted:
            break
        depth += 1
    return out


class Balanced:
    name = "balanced"
    needs_query = True

    def select(
        self,
        snap: Snapshot,
        queries: np.ndarray | None,
        self_rows: Sequence[int | None],
        allowed: np.ndarray | None,
        options: SelectionOptions,
    ) -> list[list[Pick]]:
        assert queries is not None
        labelled = snap.label_codes >= 0
        mask = labelled if allowed is None else (allowed & labelled)
        classes = np.unique(snap.label_codes[mask])
        if not len(classes):
            raise EmptyPool(f"pool {snap.pool!r} has no labelled items to balance over", param="strategy")
        k = window_size(options, len(classes))
        stop = options.offset + k
        has_self = any(r is not None for r in self_rows)
        per_query: list[list[list[tuple[int, float]]]] = [[] for _ in self_rows]
        for code in classes:
            class_mask = mask & (snap.label_codes == code)
            depth = min(int(class_mask.sum()), stop + (1 if has_self else 0))
            D, I = snap.index.search(queries, depth, class_mask)
            for q, skip in enumerate(self_rows):
                per_query[q].append(ranked_hits(D[q], I[q], skip)[:stop])
        out = []
        for lists in per_query:
            window = round_robin(lists, stop)[options.offset :]
            out.append([Pick(row, score, options.offset + i) for i, (row, score) in enumerate(window)])
        return out


register_strategy(Balanced)
