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
from exemplar.retrieval.serving.stages import Stage, StageContext
from exemplar.retrieval.serving.strategies.balanced import classes_in_scope, window_size
from exemplar.retrieval.serving.strategies.base import Params, Pick, SelectionOptions, Strategy, Window
from exemplar.retrieval.serving.strategies.quotas import class_window

__all__ = ["run_stages"]


def _staged(space: Snapshot, picks: list[Pick], stages: Sequence[tuple[Stage, Params]],
            context: StageContext) -> list[Pick]:
    for stage, params in stages:
        picks = stage.apply(space, picks, params, context)
    return picks


def _with_judged(window: Window, staged: dict[int, list[Pick]]) -> Window:
    """The window laid out from (row, score) hits, with what the stages added to each pick back."""
    by_row = {p.row: p for picks in staged.values() for p in picks if p.judge_score is not None}
    if not by_row:
        return window
    picks = [dataclasses.replace(p, judge_score=by_row[p.row].judge_score) if p.row in by_row else p
             for p in window.picks]
    return Window(picks, window.shortfall)


def run_stages(strategy: Strategy, snap: Snapshot, queries: np.ndarray | None, self_rows: Sequence[int | None],
               allowed: np.ndarray | None, options: SelectionOptions,
               stages: Sequence[tuple[Stage, Params]], contexts: Sequence[StageContext]) -> list[Window]:
    """``contexts``: one per query (per window), in order."""
    depth = max(stage.depth(params) for stage, params in stages)
    space = strategy.space(snap)
    if not strategy.per_class(options):
        assert options.k is not None  # SelectionService checks the window before any strategy runs
        stop = options.offset + options.k
        wide = dataclasses.replace(options, offset=0, k=max(depth, stop))
        out = []
        for window, context in zip(strategy.select(snap, queries, self_rows, allowed, wide), contexts, strict=True):
            kept = _staged(space, window.picks, stages, context)[options.offset:stop]
            out.append(Window([dataclasses.replace(p, rank=options.offset + i) for i, p in enumerate(kept)]))
        return out
    scope = classes_in_scope(snap, options)
    k = window_size(options, len(scope))
    reach = options.offset + k if options.fill else math.ceil((options.offset + k) / max(len(scope), 1))
    wide = dataclasses.replace(options, offset=0, k=None, k_per_class=max(depth, reach), fill=False)
    out = []
    codes = snap.label_codes
    for window, context in zip(strategy.select(snap, queries, self_rows, allowed, wide), contexts, strict=True):
        per_class: dict[int, list[Pick]] = {}
        for pick in window.picks:  # the round robin: classes in the strategy's order, each in rank order
            per_class.setdefault(int(codes[pick.row]), []).append(pick)
        order = [*per_class, *(c for c in scope if c not in per_class)]
        staged = {c: _staged(space, picks, stages, context) for c, picks in per_class.items()}
        hits = {c: [(p.row, p.score) for p in picks] for c, picks in staged.items()}
        out.append(_with_judged(class_window(hits, order, options.offset, k, options.fill), staged))
    return out

