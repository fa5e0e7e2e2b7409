"""``invariant`` (InvariantSelectPR): ``balanced`` or ``topk`` in the space of the version's CCI
adapter, where same-class items from different domains sit together. Queries pass through the
same adapter; ``invariant_base`` picks per class (``balanced``) or global (``topk``) selection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from exemplar.errors import InvalidRequest
from exemplar.retrieval.adapt.adapters import AdapterMissing
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies.base import (
    Params,
    SelectionOptions,
    Window,
    get_strategy,
    refuse_k_per_class,
    register_strategy,
)

__all__ = ["Invariant", "InvariantParams"]


class InvariantParams(Params):
    base: Literal["balanced", "topk"] | None = Field(
        None, description="Per-class quotas ('balanced') or global nearest ('topk') in the adapter space; "
        "default: the request's invariant_base ('balanced').")


class Invariant:
    name = "invariant"
    description = ("InvariantSelectPR: 'balanced' or 'topk' in the space of the version's CCI adapter, where "
                   "same-class items from different domains sit together.")
    needs_query = True
    takes_k_per_class = True
    per_class_note = "with invariant_base 'balanced'"
    Params = InvariantParams

    @staticmethod
    def base(options: SelectionOptions) -> str:
        """``strategy_params.base``, else the flat ``invariant_base`` (kept for existing callers)."""
        params = options.params
        chosen = params.base if isinstance(params, InvariantParams) else None
        return chosen or options.invariant_base

    def check(self, options: SelectionOptions) -> None:
        if options.fusion is not None:
            raise InvalidRequest("strategy 'invariant' ranks in its adapter's space, which maps one vector per item: "
                                 "fusion weighs the image and text spaces of 'topk', 'balanced' and 'random'",
                                 param="fusion")
        if self.base(options) == "topk":
            refuse_k_per_class(self.name, options, "with invariant_base 'topk' it selects the k nearest items "
                                                   "overall in the adapter space")

    def per_class(self, options: SelectionOptions) -> bool:
        return self.base(options) == "balanced"

    def space(self, snap: Snapshot) -> Snapshot:
        if snap.adapter is None:
            raise AdapterMissing(
                f"version {snap.version} of pool {snap.pool!r} has no CCI adapter: train one with "
                f"POST /v1/pools/{snap.pool}/adapters",
                param="strategy",
            )
        return snap.in_adapter_space()

    def select(
        self,
        snap: Snapshot,
        queries: np.ndarray | None,
        self_rows: Sequence[int | None],
        allowed: np.ndarray | None,
        options: SelectionOptions,
    ) -> list[Window]:
        if queries is None:
            raise ValueError("invariant needs query vectors")
        space = self.space(snap)
        assert snap.adapter is not None  # space() refuses a version without one
        base = get_strategy(self.base(options))
        return base.select(space, snap.adapter.adapter.apply(queries), self_rows, allowed, options)


register_strategy(Invariant)
