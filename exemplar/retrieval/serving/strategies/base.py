"""Selection options, results and the strategy registry."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from exemplar.errors import InvalidRequest, choices
from exemplar.retrieval.index.vectors import TUNED, Effort
from exemplar.retrieval.serving.snapshot import Snapshot

__all__ = [
    "ORDERS",
    "Order",
    "Params",
    "Pick",
    "SelectionOptions",
    "Strategy",
    "Window",
    "get_strategy",
    "integral_numbers",
    "list_strategies",
    "parse_params",
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
    # The strategy's own parameters: its ``Params``, or the request's mapping until SelectionService
    # has validated it (``parse_params``).
    params: Any = None
    # Pipeline stages after the strategy, by name: each stage's ``Params`` (or the request's mapping).
    stages: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Modality weighting for image+text pools: (image, text) weights summing to 1 (``serving/fusion.py``).
    fusion: tuple[float, float] | None = None


def _takes_int(annotation: object) -> bool:
    if annotation is int:
        return True
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and int in typing.get_args(annotation)


_INT_FIELDS: dict[type, frozenset[str]] = {}


def integral_numbers(model: type[BaseModel], data: Any) -> Any:  # noqa: ANN401 - parsed JSON
    """``data`` with whole floats given for integer fields made ints: JSON has one kind of number, 8.0
    is the integer 8 as JSON Schema says, and strict mode alone would refuse it."""
    if not isinstance(data, dict):
        return data
    names = _INT_FIELDS.get(model)
    if names is None:
        names = _INT_FIELDS[model] = frozenset(
            (field.alias or name) for name, field in model.model_fields.items() if _takes_int(field.annotation))
    fixed = {name: int(value) for name in names if isinstance(value := data.get(name), float) and value.is_integer()}
    return {**data, **fixed} if fixed else data


class Params(BaseModel):
    """Base of a strategy's or a stage's own parameters: strict types (but 8.0 is 8, as in JSON), no
    unknown fields, frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:  # noqa: ANN401 - parsed JSON
        return integral_numbers(cls, data)


def parse_params(kind: str, name: str, model: type[Params] | None, raw: Any, param: str) -> Params | None:  # noqa: ANN401
    """``raw`` (a mapping from the request, or already parsed) as ``model``; errors name the field
    under ``param`` (``strategy_params.base``)."""
    if isinstance(raw, Params):
        return raw
    if raw is None:
        return model() if model is not None else None
    if model is None:
        if raw:
            raise InvalidRequest(f"{kind} {name!r} takes no parameters", param=param)
        return None
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{param} must be an object", param=param)
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        fields = ", ".join(model.model_fields) or "none"
        raise InvalidRequest(f"{kind} {name!r}: {message} (its parameters: {fields})",
                             param=f"{param}.{where}" if where else param) from None


@dataclasses.dataclass(frozen=True)
class Pick:
    """One selected row: ``rank`` is its position in the strategy's full ranking (0-based), or in
    the pipeline's where stages re-rank; ``judge_score``: a judge model's relevance score, where a
    stage (rerank) asked one."""

    row: int
    score: float | None
    rank: int
    judge_score: float | None = None


@dataclasses.dataclass(frozen=True)
class Window:
    """One query's selection: ``picks`` in rank order and, for per-class quotas, how many items each
    class (by label code) was short of its quota in this window."""

    picks: list[Pick]
    shortfall: dict[int, int] = dataclasses.field(default_factory=dict)


class Strategy(Protocol):
    name: str
    description: str  # one line, for GET /v1/strategies
    needs_query: bool
    takes_k_per_class: bool  # per-class quotas mean something to it
    per_class_note: str  # how, when it is not plain (for error messages)
    Params: type[Params] | None  # its own parameters (strategy_params), or None

    def check(self, options: SelectionOptions) -> None:
        """Refuse options this strategy gives no meaning to (``InvalidRequest``)."""

    def per_class(self, options: SelectionOptions) -> bool:
        """Whether its ranking is the round robin of per-class rankings (``quotas.py``): pipeline
        stages then work within each class, and the quotas stay exact."""

    def space(self, snap: Snapshot) -> Snapshot:
        """The snapshot whose vectors it ranks by (the adapter's, for ``invariant``)."""

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
