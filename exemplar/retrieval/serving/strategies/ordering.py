"""How a selected window is laid out in the prompt.

By default the layout follows the similarity to the query (``Pick.score``). Where pipeline stages
re-ranked the candidates (rerank's judge, diversity's MMR), ``by_rank`` lays it out by the
pipeline's ranking (``Pick.rank``) instead, so "most similar" reads "best of the pipeline": a
layout by cosine would undo the judge's order in the one place the model sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies.base import Order, Pick

__all__ = ["arrange", "shuffled"]

T = TypeVar("T")


def _similarity_key(pick: Pick) -> tuple[float, int]:
    # Without a score (random without a query) the rank is the only order there is.
    return (-pick.score if pick.score is not None else 0.0, pick.rank)


def _rank_key(pick: Pick) -> tuple[float, int]:
    return (0.0, pick.rank)


def shuffled(items: Sequence[T], seed: int) -> list[T]:
    """``items`` in the order of ``order: "shuffle"`` with ``seed``: one permutation per seed and length,
    so a reported seed lays the same items out the same way again."""
    perm = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in perm]


def arrange(picks: list[Pick], order: Order, snap: Snapshot, seed: int, *, by_rank: bool = False) -> list[Pick]:
    """``picks`` laid out by ``order``; "most similar" is the highest ``score`` or, with ``by_rank``,
    the lowest ``rank`` (the pipeline's best). ``shuffle`` ignores both."""
    key: Callable[[Pick], tuple[float, int]] = _rank_key if by_rank else _similarity_key
    if order == "most_similar_first":
        return sorted(picks, key=key)
    if order == "most_similar_last":
        return sorted(picks, key=key, reverse=True)
    if order == "shuffle":
        return shuffled(picks, seed)
    # class_grouped: classes in order of their best pick, each class's picks best first.
    ranked = sorted(picks, key=key)
    groups: dict[int, list[Pick]] = {}
    for pick in ranked:
        groups.setdefault(int(snap.label_codes[pick.row]), []).append(pick)
    return [pick for group in groups.values() for pick in group]
