"""``random``: a seeded uniform sample of the allowed items (a baseline; no query needed), or with
``k_per_class`` a seeded class-balanced sample: exactly that many items of every class in scope
(ManyICL's many-shot setup), laid out by the same per-class round robin as ``balanced``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies.balanced import classes_in_scope, window_size
from exemplar.retrieval.serving.strategies.base import Pick, SelectionOptions, Window, register_strategy
from exemplar.retrieval.serving.strategies.quotas import class_window

__all__ = ["RandomStrategy"]


class RandomStrategy:
    name = "random"
    needs_query = False
    takes_k_per_class = True
    per_class_note = "a seeded class-balanced sample"

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
        rng = np.random.default_rng(options.seed)
        candidates = np.arange(snap.size) if allowed is None else np.flatnonzero(allowed)
        if options.k_per_class is not None:
            return self._balanced(snap, queries, self_rows, candidates, options, rng)
        if options.k is None:
            raise ValueError("random needs k or k_per_class")
        # One permutation per seed, so consecutive offsets are disjoint windows of the same order.
        ranking = rng.permutation(candidates)
        out = []
        for q, skip in enumerate(self_rows):
            ordered = ranking if skip is None else ranking[ranking != skip]
            rows = ordered[options.offset : options.offset + options.k]
            scores = _scores(snap, queries, q, rows)
            out.append(Window([Pick(int(r), s, options.offset + i) for i, (r, s) in enumerate(zip(rows, scores))]))
        return out

    @staticmethod
    def _balanced(snap: Snapshot, queries: np.ndarray | None, self_rows: Sequence[int | None], candidates: np.ndarray,
                  options: SelectionOptions, rng: np.random.Generator) -> list[Window]:
        scope = classes_in_scope(snap, options)
        codes = snap.label_codes[candidates]
        # One permutation per class and seed (classes in code order), shared by every query.
        rankings = {c: rng.permutation(candidates[codes == c]) for c in scope}
        k = window_size(options, len(scope))
        out = []
        for q, skip in enumerate(self_rows):
            per_class = {}
            for code, ranking in rankings.items():
                rows = ranking if skip is None else ranking[ranking != skip]
                rows = rows[: options.offset + k]
                per_class[code] = list(zip(rows.tolist(), _scores(snap, queries, q, rows)))
            out.append(class_window(per_class, scope, options.offset, k, options.fill))
        return out


def _scores(snap: Snapshot, queries: np.ndarray | None, q: int, rows: np.ndarray) -> list[float | None]:
    if queries is None:
        return [None] * len(rows)
    return [float(s) for s in np.asarray(snap.vectors[rows]) @ queries[q]]


register_strategy(RandomStrategy)
