"""``invariant`` (InvariantSelectPR): ``balanced`` or ``topk`` in the space of the version's CCI
adapter, where same-class items from different domains sit together. Queries pass through the
same adapter; ``invariant_base`` picks per class (``balanced``) or global (``topk``) selection."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from exemplar.retrieval.adapters import AdapterMissing
from exemplar.retrieval.snapshot import Snapshot
from exemplar.retrieval.strategies.base import Pick, SelectionOptions, get_strategy, register_strategy

__all__ = ["INVARIANT_BASES", "Invariant"]

INVARIANT_BASES: tuple[str, ...] = ("balanced", "topk")


class Invariant:
    name = "invariant"
    needs_query = True

    def select(
        self,
        snap: Snapshot,
        queries: np.ndarray | None,
        self_rows: Sequence[int | None],
        allowed: np.ndarray | None,
        options: SelectionOptions,
    ) -> list[list[Pick]]:
        assert queries is not None
        if snap.adapter is None:
            raise AdapterMissing(
                f"version {snap.version} of pool {snap.pool!r} has no CCI adapter: train one with "
                f"POST /v1/pools/{snap.pool}/adapters",
                param="strategy",
            )
        base = get_strategy(options.invariant_base)
        return base.select(snap.in_adapter_space(), snap.adapter.adapter.apply(queries), self_rows, allowed, options)


register_strategy(Invariant)
