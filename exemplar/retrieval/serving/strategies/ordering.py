"""How a selected window is laid out in the prompt."""

from __future__ import annotations

import numpy as np

from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies.base import Order, Pick

__all__ = ["arrange"]


def _similarity_key(pick: Pick) -> tuple[float, int]:
    # Without a score (random without a query) the rank is the only order there is.
    return (-pick.score if pick.score is not None else 0.0, pick.rank)


def arrange(picks: list[Pick], order: Order, snap: Snapshot, seed: int) -> list[Pick]:
    if order == "most_similar_first":
        return sorted(picks, key=_similarity_key)
    if order == "most_similar_last":
        return sorted(picks, key=_similarity_key, reverse=True)
    if order == "shuffle":
        perm = np.random.default_rng(seed).permutation(len(picks))
        return [picks[i] for i in perm]
    # class_grouped: classes in order of their best pick, each class's picks most similar first.
    ranked = sorted(picks, key=_similarity_key)
    groups: dict[int, list[Pick]] = {}
    for pick in ranked:
        groups.setdefault(int(snap.label_codes[pick.row]), []).append(pick)
    return [pick for group in groups.values() for pick in group]
