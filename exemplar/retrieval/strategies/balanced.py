"""``balanced``: nearest items per class with exact per-class quotas.

Each class is searched in its own index (``ClassIndexes``), so the cost is about one scan of the
pool, not one filtered scan per class. The ranking is a round robin over the classes, ordered by each class's best similarity to the query:
the best of every class, then the second best of every class, and so on; a class that runs out is
skipped. A window of ``k`` therefore gives each of ``C`` classes ``k // C`` items and the ``k % C``
classes most similar to the query one more; ``k_per_class = m`` is the window ``k = m * C``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from exemplar.errors import EmptyPool
from exemplar.retrieval.class_index import round_robin
from exemplar.retrieval.snapshot import Snapshot
from exemplar.retrieval.strategies.base import Pick, SelectionOptions, register_strategy
from exemplar.retrieval.strategies.topk import ranked_hits

__all__ = ["Balanced", "round_robin", "window_size"]


def window_size(options: SelectionOptions, n_classes: int) -> int:
    if options.k_per_class is not None:
        return options.k_per_class * n_classes
    assert options.k is not None
    return options.k


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
        classes = snap.classes
        assert classes is not None, "snapshots are served with their class indexes"
        # One search per class in that class's own index; a filter becomes a mask over its rows.
        searched: list[tuple[int, np.ndarray | None, int]] = []
        for code, rows in enumerate(classes.rows):
            local = None if allowed is None else allowed[rows]
            count = len(rows) if local is None else int(local.sum())
            if count:
                searched.append((code, local, count))
        if not searched:
            raise EmptyPool(f"pool {snap.pool!r} has no labelled items to balance over", param="strategy")
        k = window_size(options, len(searched))
        stop = options.offset + k
        has_self = any(r is not None for r in self_rows)
        per_query: list[list[list[tuple[int, float]]]] = [[] for _ in self_rows]
        for code, local, count in searched:
            D, I = classes.search(code, queries, min(count, stop + (1 if has_self else 0)), local)
            for q, skip in enumerate(self_rows):
                per_query[q].append(ranked_hits(D[q], I[q], skip)[:stop])
        out = []
        for lists in per_query:
            window = round_robin(lists, stop)[options.offset :]
            out.append([Pick(row, score, options.offset + i) for i, (row, score) in enumerate(window)])
        return out


register_strategy(Balanced)
