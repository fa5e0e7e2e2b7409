"""Selection options, results and the strategy registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import numpy as np

from exemplar.errors import InvalidRequest, choices
from exemplar.retrieval.snapshot import Snapshot

__all__ = [
    "ORDERS",
    "Order",
    "Pick",
    "SelectionOptions",
    "Strategy",
    "get_strategy",
    "list_strategies",
    "register_strategy",
]

Order = Literal["most_similar_first", "most_similar_last", "shuffle", "class_grouped"]
ORDERS: tuple[str, ...] = ("most_similar_first", "most_similar_last", "shuffle", "class_grouped")


@dataclasses.dataclass(frozen=True)
class SelectionOptions:
    """What to select. ``k`` is the window size; ``offset`` skips that many results of the ranking."""

    k: int | None = 8
    k_per_class: int | None = None
    labels: tuple[str, ...] | None = None
    domains: tuple[str, ...] | None = None
    exclude_ids: tuple[str, ...] = ()
    order: Order = "most_similar_first"
    seed: int = 0
    offset: int = 0
    invariant_base: Literal["balanced", "topk"] = "balanced"


@dataclasses.dataclass(frozen=True)
class Pick:
    """One selected row: ``rank`` is its position in the strategy's full ranking (0-based)."""

    row: int
    score: float | None
    rank: int


class Strategy(Protocol):
    name: str
    needs_query: bool

    def select(
        self,
        snap: Snapshot,
        queries: np.ndarray | None,
        self_rows: Sequence[int | None],
        allowed: np.ndarray | None,
        options: SelectionOptions,
    ) -> list[list[Pick]]:
        """One list of picks per query, in rank order; ``self_rows`` are never picked for their query."""


_REGISTRY: dict[str, Strategy] = {}


def register_strategy(factory: Callable[[], Strategy]) -> Callable[[], Strategy]:
    strategy = factory()
    _REGISTRY[strategy.name] = strategy
    return factory


def list_strategies() -> list[str]:
    return sorted(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidRequest(
            f"unknown strategy {name!r}; valid strategies: {choices(_REGISTRY)}", param="strategy"
        ) from None
