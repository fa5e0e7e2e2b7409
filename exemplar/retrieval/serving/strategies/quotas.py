"""Per-class quotas laid out as one ranking, shared by ``balanced`` and class-balanced ``random``.

The ranking is a round robin over the classes in a fixed order: position ``p`` is the item at depth
``p // C`` of class ``order[p % C]``. A window ``[offset, offset + k)`` of it gives each of the ``C``
classes ``k // C`` slots and the first ``k % C`` classes one more, and consecutive windows continue
the same ranking. A class that has no item at a slot's depth leaves a hole: the slot stays empty and
is counted in that class's shortfall, unless ``fill`` is set, in which case the ranking skips the
exhausted classes and the others take the slots (the window still reports the shortfall).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from exemplar.retrieval.index.roundrobin import interleave
from exemplar.retrieval.serving.strategies.base import Pick, Window

__all__ = ["class_window", "depth_needed"]

Hits = Sequence[tuple[int, float | None]]


def depth_needed(stop: int, n_classes: int, fill: bool) -> int:
    """How deep each class must be ranked for a window that ends at ``stop``."""
    return stop if fill else math.ceil(stop / max(n_classes, 1))


def class_window(per_class: dict[int, Hits], order: Sequence[int], offset: int, k: int, fill: bool) -> Window:
    """The window ``[offset, offset + k)`` of the round robin over ``order`` (class codes, every
    class in scope, even one with no hits); ``per_class[c]``: class ``c``'s hits in rank order."""
    n = len(order)
    shortfall: dict[int, int] = {}
    holes: list[tuple[int, int]] = []  # (position, class) of each empty slot in the window
    picks: list[Pick] = []
    for position in range(offset, offset + k):
        code = order[position % n]
        hits = per_class.get(code, ())
        depth = position // n
        if depth < len(hits):
            row, score = hits[depth]
            picks.append(Pick(row, score, position))
        else:
            shortfall[code] = shortfall.get(code, 0) + 1
            holes.append((position, code))
    if fill and holes:
        compact = interleave(per_class, order, offset + k)
        picks = [Pick(row, score, offset + i) for i, (row, score) in enumerate(compact[offset:])]
    return Window(picks, shortfall)

