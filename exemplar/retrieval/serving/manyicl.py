"""ManyICL's fixed demonstration set: one seeded, class-balanced sample for a whole batch, drawn
without looking at the queries, so every batch with the same seed and filters sees the same set
(less any of its own query items).

Each class in scope is ranked by its own seeded shuffle of the pool's allowed items (as the
``random`` strategy's ``k_per_class`` sample does), and the window is the per-class round robin of
``quotas``: ``k_per_class`` of every class, or ``k`` spread over the classes as ``balanced`` spreads
it. The ranking is drawn before the query items are taken out, so removing one of them moves only
its own class up by one item; the rest of the set stays as it was.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Literal

import numpy as np

from exemplar.errors import InvalidRequest
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies.balanced import classes_in_scope, window_size
from exemplar.retrieval.serving.strategies.base import SelectionOptions, Window
from exemplar.retrieval.serving.strategies.quotas import class_window
from exemplar.retrieval.serving.strategies.random import class_rankings

__all__ = ["FIXED_STRATEGY", "MAX_SHUFFLE_SEED", "SHARED_MODES", "SharedMode", "check_fixed", "check_shuffle",
           "draw_shuffle_seed", "fixed_window"]

SharedMode = Literal["mean", "fixed"]
SHARED_MODES: tuple[str, ...] = ("mean", "fixed")
# The fixed set is the class-balanced seeded sample of ``random``: the strategy a request names.
FIXED_STRATEGY = "random"
MAX_SHUFFLE_SEED = 2**31 - 1


def check_shuffle(shared: object, shuffle_seed: int | None, reshuffle: bool = False) -> None:
    """``shuffle_seed`` and ``reshuffle`` order the fixed set (select/batch, infer/batch): only with
    shared 'fixed', and one of them."""
    for name, value in (("shuffle_seed", shuffle_seed), ("reshuffle", reshuffle)):
        if value not in (None, False) and shared != "fixed":
            raise InvalidRequest(f"{name} orders the fixed set: give shared 'fixed'", param=name)
    if shuffle_seed is not None and reshuffle:
        raise InvalidRequest("give shuffle_seed (an order to repeat) or reshuffle (a fresh one), not both",
                             param="reshuffle")


def draw_shuffle_seed() -> int:
    """A fresh seed for ``reshuffle``: reported with the response, so the order can be asked for again."""
    return secrets.randbelow(MAX_SHUFFLE_SEED + 1)


def check_fixed(strategy: str, options: SelectionOptions) -> None:
    """What the fixed set refuses: it is ``random``'s sample and runs no pipeline stages."""
    if strategy != FIXED_STRATEGY:
        raise InvalidRequest("shared 'fixed' is a seeded class-balanced sample: give strategy 'random'",
                             param="strategy")
    if options.stages:
        name = sorted(options.stages)[0]
        raise InvalidRequest("shared 'fixed' runs no pipeline stages: the set does not depend on the queries",
                             param=name)


def fixed_window(snap: Snapshot, allowed: np.ndarray | None, excluded: Sequence[int],
                 options: SelectionOptions) -> Window:
    """The batch's one set: the window ``[offset, offset + k)`` of the seeded per-class round robin
    over the allowed items, with the rows in ``excluded`` (the batch's query items) skipped."""
    candidates = np.arange(snap.size) if allowed is None else np.flatnonzero(allowed)
    scope = classes_in_scope(snap, options)
    k = window_size(options, len(scope))
    codes = snap.label_codes[candidates]
    skip = np.unique(np.asarray(excluded, np.int64))
    # Deep enough for the window after every query item of a class is skipped (fill may hand one
    # class every slot).
    depth = options.offset + k + len(skip)
    # The rankings of ``random``'s k_per_class sample: the same set for the same seed.
    per_class = {}
    for c, ranking in class_rankings(candidates, codes, scope, options.seed, depth).items():
        if len(skip):
            ranking = ranking[~np.isin(ranking, skip)]
        per_class[c] = [(int(r), None) for r in ranking]
    return class_window(per_class, scope, options.offset, k, options.fill)
