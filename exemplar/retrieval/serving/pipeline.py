"""A selection with pipeline stages: candidates from the strategy, then each stage, then the window.

Without stages a strategy selects its window directly (the hot path). With them, the strategy is
asked for its first candidates, as deep as the deepest stage needs and at least as deep as the
window reaches; the stages re-rank or drop them; the window (``offset``, ``k``) is taken from what
is left. For a strategy whose ranking is a round robin over per-class rankings (``balanced``,
``invariant`` over ``balanced``, ``random`` with ``k_per_class``) the stages work within each class
and the round robin is laid out again afterwards, so per-class quotas stay exact.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.stages import Stage
from exemplar.retrieval.serving.strategies.balanced import classes_in_scope, window_size
from exemplar.retrieval.serving.strategies.base import Params, Pick, SelectionOptions, Strategy, Window
from exemplar.retrieval.serving.strategies.quotas import class_window

__all__ = ["run_stages"]


def _staged(space: Snapshot, picks: list[Pick], stages: Sequence[tuple[Stage, Params]]) -> list[Pick]:
    for stage, params in stages:
        picks = stage.apply(space, picks, params)
    return picks


def run_stages(strategy: Strategy, snap: Snapshot, queries: np.ndarray | None, self_rows: Sequence[int | None],
               allowed: np.ndarray | None, options: SelectionOptions,
               stages: Sequence[tuple[Stage, Params]]) -> list[Window]:
    depth = max(stage.depth(params) for stage, params in stages)
    space = strategy.space(snap)
    if not strategy.per_class(options):
        assert options.k is not None  # SelectionService checks the window before any strategy runs
        stop = options.offset + options.k
        wide = dataclasses.replace(options, offset=0, k=max(depth, stop))
        out = []
        for window in strategy.select(snap, queries, self_rows, allowed, wide):
            kept = _staged(space, window.picks, stages)[options.offset:stop]
            out.append(Window([Pick(p.row, p.score, options.offset + i) for i, p in enumerate(kept)]))
        return out
    scope = classes_in_scope(snap, options)
    k = window_size(options, len(scope))
    reach = options.offset + k if options.fill else math.ceil((options.offset + k) / max(len(scope), 1))
    wide = dataclasses.replace(options, offset=0, k=None, k_per_class=max(depth, reach), fill=False)
    out = []
    codes = snap.label_codes
    for window in strategy.select(snap, queries, self_rows, allowed, wide):
        per_class: dict[int, list[Pick]] = {}
        for pick in window.picks:  # the round robin: classes in the strategy's order, each in rank order
            per_class.setdefault(int(codes[pick.row]), []).append(pick)
        order = [*per_class, *(c for c in scope if c not in per_class)]
        hits = {c: [(p.row, p.score) for p in _staged(space, picks, stages)] for c, picks in per_class.items()}
        out.append(class_window(hits, order, options.offset, k, options.fill))
    return out

