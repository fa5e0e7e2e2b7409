"""``random``: a seeded uniform sample of the allowed items (a baseline; no query needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from exemplar.retrieval.snapshot import Snapshot
from exemplar.retrieval.strategies.base import Pick, SelectionOptions, register_strategy

__all__ = ["RandomStrategy"]


class RandomStrategy:
    name = "random"
    needs_query = False

    def select(
        self,
        snap: Snapshot,
        queries: np.ndarray | None,
        self_rows: Sequence[int | None],
        allowed: np.ndarray | None,
        options: SelectionOptions,
    ) -> list[list[Pick]]:
        assert options.k is not None
        candidates = np.arange(snap.size) if allowed is None else np.flatnonzero(allowed)
        # One permutation per seed, so consecutive offsets are disjoint windows of the same order.
        ranking = np.random.default_rng(options.seed).permutation(candidates)
        out = []
        for q, skip in enumerate(self_rows):
            ordered = ranking if skip is None else ranking[ranking != skip]
            rows = ordered[options.offset : options.offset + options.k]
            if queries is None:
                scores: list[float | None] = [None] * len(rows)
            else:
                scores = [float(s) for s in snap.vectors[rows] @ queries[q]]
            out.append([Pick(int(r), s, options.offset + i) for i, (r, s) in enumerate(zip(rows, scores))])
        return out


register_strategy(RandomStrategy)
