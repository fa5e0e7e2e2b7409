"""``balanced``: nearest items per class with exact per-class quotas.

Each class is searched over its own rows only (the class lists of a partitioned IVF, or one index
per class), so the cost is about one scan of the pool, not one filtered scan per class. The ranking is a round robin over the classes in scope (the
``labels`` asked for, else every label of the pool), ordered by each class's best similarity to the
query: the best of every class, then the second best of every class, and so on (``quotas.py``). A
window of ``k`` gives each of ``C`` classes ``k // C`` items and the ``k % C`` classes most similar
to the query one more; ``k_per_class = m`` is the window ``k = m * C``. A class with fewer items than
its quota is reported as a shortfall; ``fill`` lets the other classes take its slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from exemplar.errors import EmptyPool
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies.base import SelectionOptions, Window, register_strategy
from exemplar.retrieval.serving.strategies.quotas import class_window, depth_needed
from exemplar.retrieval.serving.strategies.topk import ranked_hits

__all__ = ["Balanced", "classes_in_scope", "window_size"]


def window_size(options: SelectionOptions, n_classes: int) -> int:
    if options.k_per_class is not None:
        return options.k_per_class * n_classes
    if options.k is None:  # SelectionService checks options before any strategy runs
        raise ValueError("a window needs k or k_per_class")
    return options.k


def classes_in_scope(snap: Snapshot, options: SelectionOptions) -> list[int]:
    """Label codes a per-class quota applies to: the ``labels`` asked for, else all of the pool's."""
    if options.labels is None:
        return list(range(len(snap.labels)))
    lookup = {name: code for code, name in enumerate(snap.labels)}
    return sorted({lookup[name] for name in options.labels if name in lookup})


class Balanced:
    name = "balanced"
    description = ("The nearest items of every class, with exact per-class quotas: the best of each class, "
                   "then the second best of each, classes ordered by their best similarity.")
    needs_query = True
    takes_k_per_class = True
    per_class_note = ""
    Params = None

    def per_class(self, options: SelectionOptions) -> bool:
        return True

    def space(self, snap: Snapshot) -> Snapshot:
        return snap

    def check(self, options: SelectionOptions) -> None:
        pass

    def select(
        self,
        snap: Snapshot,
        queries: np.ndarray | None,
        self_rows: Sequence[int | None],
        allowed: np.ndarray | None,
        options: SelectionOptions,
    ) -> list[Window]:
        if queries is None:
            raise ValueError("balanced needs query vectors")
        classes = snap.classes
        if classes is None:
            raise RuntimeError("snapshots are served with their class indexes")
        scope = classes_in_scope(snap, options)
        counts: dict[int, tuple[np.ndarray | None, int]] = {}
        for code in scope:
            rows = classes.rows[code]
            local = None if allowed is None else allowed[rows]
            counts[code] = (local, len(rows) if local is None else int(local.sum()))
        if not any(count for _, count in counts.values()):
            raise EmptyPool(f"pool {snap.pool!r} has no labelled items to balance over", param="strategy")
        k = window_size(options, len(scope))
        depth = depth_needed(options.offset + k, len(scope), options.fill)
        has_self = any(r is not None for r in self_rows)
        per_query: list[dict[int, list[tuple[int, float]]]] = [{} for _ in self_rows]
        # Every class searched over its own rows (one faiss call where the index allows); a filter
        # becomes a mask over the class's rows.
        wanted = [code for code, (_, count) in counts.items() if count]
        masks = {code: local for code, (local, _) in counts.items() if local is not None}
        # A window that ends before the round robin's second round gives one slot to each of its
        # first classes: only those need their best items in full.
        stop = options.offset + k
        needed = stop if not options.fill and stop < len(scope) else None
        found = classes.search_many(wanted, queries, depth + (1 if has_self else 0), masks, needed=needed,
                                    effort=options.effort)
        for code in wanted:
            D, I = found[code]
            for q, skip in enumerate(self_rows):
                per_query[q][code] = ranked_hits(D[q], I[q], skip)[:depth]
        out = []
        for hits in per_query:
            # Classes by their best score; classes with nothing to offer last, in code order.
            order = sorted(scope, key=lambda c: (-hits[c][0][1], c) if hits.get(c) else (np.inf, c))
            out.append(class_window(hits, order, options.offset, k, options.fill))
        return out


register_strategy(Balanced)
