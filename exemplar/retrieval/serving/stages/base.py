"""Pipeline stages after a strategy: the protocol and the registry.

A selection is a pipeline: candidates (the strategy) -> the stages present in the request, in
their ``position`` order (rerank, then diversity) -> the window (``offset``, ``k``) -> the order. A
stage is one module that defines its ``Params`` and registers itself; requests name it as a field
of its own (``"diversity": {...}``), and ``GET /v1/strategies`` lists it with its parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from exemplar.errors import InvalidRequest, choices
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies.base import Params, Pick

__all__ = ["Stage", "get_stage", "list_stages", "register_stage"]


class Stage(Protocol):
    name: str
    description: str
    position: int  # where it runs in the pipeline: lower first
    Params: type[Params]

    def depth(self, params: Params) -> int:
        """Candidates it needs from the strategy (per class, where quotas apply)."""

    def apply(self, space: Snapshot, candidates: list[Pick], params: Params) -> list[Pick]:
        """The candidates it keeps, in its order (``rank`` is reassigned after the last stage).
        ``space``: the snapshot the strategy ranked in (its vectors are the candidates')."""


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
