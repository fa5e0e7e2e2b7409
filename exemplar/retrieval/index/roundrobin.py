"""The round robin over per-class hit lists that skips classes once they run out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

__all__ = ["interleave"]

Hit = TypeVar("Hit")


def interleave(per_class: Mapping[int, Sequence[Hit]], order: Sequence[int], stop: int) -> list[Hit]:
    """Depth 0 of every class in ``order``, then depth 1, ..., up to ``stop`` hits; a class that
    has run out is skipped."""
    out: list[Hit] = []
    depth = 0
    while len(out) < stop:
        emitted = False
        for code in order:
            hits = per_class.get(code, ())
            if depth < len(hits):
                out.append(hits[depth])
                emitted = True
                if len(out) == stop:
                    break
        if not emitted:
            break
        depth += 1
    return out
