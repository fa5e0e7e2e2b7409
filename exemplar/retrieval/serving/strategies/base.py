"""Selection options, results and the strategy registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import numpy as np

from exemplar.errors import InvalidRequest, choices
from exemplar.retrieval.index.vectors import TUNED, Effort
from exemplar.retrieval.serving.snapshot import Snapshot

__all__ = [
    "ORDERS",
    "Order",
    "Pick",
    "SelectionOptions",
    "Strategy",
    "Window",
    "get_strategy",
    "list_strategies",
    "per_class_strategies",
    "refuse_k_per_class",
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
    # Per-class quotas: a class with fewer items than its quota leaves its slots empty (and the
    # result says so, ``Window.shortfall``) unless ``fill`` lets the other classes take them.
    fill: bool = False
    # How hard the index searches: as tuned at build time, shallower or deeper, or exactly.
    effort: Effort = TUNED


@dataclasses.dataclass(frozen=True)
class Pick:
    """One selected row: ``rank`` is its position in the strategy's full ranking (0-based)."""

    row: int
    score: float | None
    rank: int


@dataclasses.dataclass(frozen=True)
class Window:
    """One query's selection: ``picks`` in rank order and, for per-class quotas, how many items each
    class (by label code) was short of its quota in this window."""

    picks: list[Pick]
    shortfall: dict[int, int] = dataclasses.field(default_factory=dict)


class Strategy(Protocol):
    name: str
    needs_query: bool
    takes_k_per_class: bool  # per-class quotas mean something to it
    per_class_note: str  # how, when it is not plain (for error messages)

    def check(self, options: SelectionOptions) -> None:
        """Refuse options this strategy gives no meaning to (``InvalidRequest``)."""

    def select(
        self,
        snap: Snapshot,
        queries: np.ndarray | None,
        self_rows: Sequence[int | None],
        allowed: np.ndarray | None,
        options: SelectionOptions,
    ) -> list[Window]:
        """One window per query, picks in rank order; ``self_rows`` are never picked for their query."""


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


def per_class_strategies() -> list[str]:
    """What takes ``k_per_class``, for error messages."""
    return [f"{name} ({_REGISTRY[name].per_class_note})" if _REGISTRY[name].per_class_note else name
            for name in sorted(_REGISTRY) if _REGISTRY[name].takes_k_per_class]


def refuse_k_per_class(name: str, options: SelectionOptions, why: str) -> None:
    if options.k_per_class is not None:
        raise InvalidRequest(
            f"strategy {name!r} does not take k_per_class ({why}); it is taken by "
            f"{', '.join(per_class_strategies())}",
            param="k_per_class",
        )
