"""``invariant`` (InvariantSelectPR): ``balanced`` or ``topk`` in the space of the version's CCI
adapter, where same-class items from different domains sit together. Queries pass through the
same adapter; ``invariant_base`` picks per class (``balanced``) or global (``topk``) selection."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from exemplar.retrieval.adapt.adapters import AdapterMissing
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies.base import (
    SelectionOptions,
    Window,
    get_strategy,
    refuse_k_per_class,
    register_strategy,
)

__all__ = ["Invariant"]


class Invariant:
    name = "invariant"
    needs_query = True
    takes_k_per_class = True
    per_class_note = "with invariant_base 'balanced'"

    def check(self, options: SelectionOptions) -> None:
        if options.invariant_base == "topk":
            refuse_k_per_class(self.name, options, "with invariant_base 'topk' it selects the k nearest items "
                                                   "overall in the adapter space")

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
        if snap.adapter is None:
            raise AdapterMissing(
                f"version {snap.version} of pool {snap.pool!r} has no CCI adapter: train one with "
                f"POST /v1/pools/{snap.pool}/adapters",
                param="strategy",
            )
        base = get_strategy(options.invariant_base)
        return base.select(snap.in_adapter_space(), snap.adapter.adapter.apply(queries), self_rows, allowed, options)


register_strategy(Invariant)
