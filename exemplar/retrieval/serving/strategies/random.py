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

__all__ = ["RandomStrategy", "class_rankings", "shuffled_prefix"]


class RandomStrategy:
    name = "random"
    description = ("A seeded uniform sample (a baseline; no query needed), or with k_per_class a seeded "
                   "class-balanced one (ManyICL's many-shot setup).")
    needs_query = False
    takes_k_per_class = True
    per_class_note = "a seeded class-balanced sample"
    Params = None

    def per_class(self, options: SelectionOptions) -> bool:
        return options.k_per_class is not None

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
        candidates = np.arange(snap.size) if allowed is None else np.flatnonzero(allowed)
        if options.k_per_class is not None:
            return self._balanced(snap, queries, self_rows, candidates, options)
        if options.k is None:
            raise ValueError("random needs k or k_per_class")
        # One shuffle per seed, so consecutive offsets are disjoint windows of the same order; only
        # as much of it as the window reaches (one more: a query item that comes up is skipped).
        stop = options.offset + options.k + 1
        ranking = candidates[shuffled_prefix(len(candidates), stop, np.random.default_rng(options.seed))]
        out = []
        for q, skip in enumerate(self_rows):
            ordered = ranking if skip is None else ranking[ranking != skip]
            rows = ordered[options.offset : options.offset + options.k]
            scores = _scores(snap, queries, q, rows)
            out.append(Window([Pick(int(r), s, options.offset + i) for i, (r, s) in enumerate(zip(rows, scores))]))
        return out

    @staticmethod
    def _balanced(snap: Snapshot, queries: np.ndarray | None, self_rows: Sequence[int | None], candidates: np.ndarray,
                  options: SelectionOptions) -> list[Window]:
        scope = classes_in_scope(snap, options)
        codes = snap.label_codes[candidates]
        k = window_size(options, len(scope))
        # Shared by every query; as deep as the window reaches, plus one (a query item that comes up).
        rankings = class_rankings(candidates, codes, scope, options.seed, options.offset + k + 1)
        out = []
        for q, skip in enumerate(self_rows):
            per_class = {}
            for code, ranking in rankings.items():
                rows = ranking if skip is None else ranking[ranking != skip]
                rows = rows[: options.offset + k]
                per_class[code] = list(zip(rows.tolist(), _scores(snap, queries, q, rows)))
            out.append(class_window(per_class, scope, options.offset, k, options.fill))
        return out


def class_rankings(candidates: np.ndarray, codes: np.ndarray, scope: Sequence[int], seed: int,
                   depth: int) -> dict[int, np.ndarray]:
    """Each class's first ``depth`` candidates in a seeded shuffle: one stream per (seed, class), so
    a deeper window extends the same ranking and one class's items do not move another's.
    ``codes``: the label code of each of ``candidates``."""
    rankings = {}
    for c in scope:
        members = candidates[codes == c]
        rankings[c] = members[shuffled_prefix(len(members), depth, np.random.default_rng([seed, c]))]
    return rankings


def shuffled_prefix(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """The first ``m`` positions of a Fisher-Yates shuffle of ``range(n)`` drawn from ``rng``,
    without shuffling the other ``n - m``: a window of 8 from a million rows costs 8 draws, not a
    permutation of a million (about 15 ms). Step ``i`` swaps position ``i`` with a position drawn
    from ``[i, n)``, so a longer prefix from the same seed starts with the shorter one."""
    m = min(m, n)
    if m == 0:
        return np.empty(0, np.int64)
    draws = rng.integers(np.arange(m), n)
    moved: dict[int, int] = {}  # position -> value, where a swap left a value other than its own
    out = np.empty(m, np.int64)
    for i, j in enumerate(draws.tolist()):
        out[i] = moved.get(j, j)
        moved[j] = moved.get(i, i)
    return out


def _scores(snap: Snapshot, queries: np.ndarray | None, q: int, rows: np.ndarray) -> list[float | None]:
    if queries is None:
        return [None] * len(rows)
    return [float(s) for s in np.asarray(snap.vectors[rows]) @ queries[q]]


register_strategy(RandomStrategy)
