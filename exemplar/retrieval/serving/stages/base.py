"""Pipeline stages after a strategy: the protocol and the registry.

A selection is a pipeline: candidates (the strategy) -> the stages present in the request, in
their ``position`` order (rerank, then diversity) -> the window (``offset``, ``k``) -> the order. A
stage is one module that defines its ``Params`` and registers itself; requests name it as a field
of its own (``"diversity": {...}``), and ``GET /v1/strategies`` lists it with its parameters.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from exemplar.errors import InvalidRequest, choices
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies.base import Params, Pick

if TYPE_CHECKING:  # selection.py imports this package; these are for annotations only
    from exemplar.retrieval.mllm import MLLMRegistry
    from exemplar.retrieval.serving.selection import Query

__all__ = ["Stage", "StageCache", "StageContext", "get_stage", "list_stages", "register_stage"]


class StageCache:
    """Values that stages compute from a pool version and a query, kept for the next request that
    asks the same (a judge model's scores cost a call each): least recently used first out, bounded
    in entries. Keys begin with the stage's name, so stages share one cache without colliding."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:  # noqa: ANN401 - whatever the stage stored
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:  # noqa: ANN401
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a stage may need beyond the candidates: the serving snapshot (items' texts and images),
    the query as the request gave it (None where one selection stands for several queries, as a
    batch's shared set does), its vector, and the server's model endpoints and stage cache."""

    snap: Snapshot
    query: Query | None = None
    vector: np.ndarray | None = None
    mllms: MLLMRegistry | None = None
    cache: StageCache = dataclasses.field(default_factory=lambda: StageCache(0))


class Stage(Protocol):
    name: str
    description: str
    position: int  # where it runs in the pipeline: lower first
    Params: type[Params]

    def depth(self, params: Params) -> int:
        """Candidates it needs from the strategy (per class, where quotas apply)."""

    def apply(self, space: Snapshot, candidates: list[Pick], params: Params, context: StageContext) -> list[Pick]:
        """The candidates it keeps, in its order (``rank`` is reassigned after the last stage).
        ``space``: the snapshot the strategy ranked in (its vectors are the candidates');
        ``context``: the query and the server's resources."""


_REGISTRY: dict[str, Stage] = {}


def register_stage(factory: Callable[[], Stage]) -> Callable[[], Stage]:
    stage = factory()
    _REGISTRY[stage.name] = stage
    return factory


def list_stages() -> list[Stage]:
    """Every stage, in pipeline order."""
    return sorted(_REGISTRY.values(), key=lambda s: s.position)


def get_stage(name: str) -> Stage:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidRequest(f"unknown stage {name!r}; valid stages: {choices(_REGISTRY)}", param=name) from None
