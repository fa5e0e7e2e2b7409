"""One loaded, immutable pool version: vectors, index and item columns, ready to select from."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exemplar.errors import Conflict
from exemplar.retrieval.adapt.adapters import AdapterView
from exemplar.retrieval.serving.fusion import ModalityVectors, check_fusion

if TYPE_CHECKING:
    from exemplar.retrieval.serving.composite import RowSpace
    from exemplar.retrieval.store.manifest import Manifest

__all__ = ["Snapshot", "label_codes_of"]


def label_codes_of(values: Sequence[str | None]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes for string values (``-1`` for missing), names sorted for stable codes."""
    names = tuple(sorted({v for v in values if v is not None}))
    lookup = {name: i for i, name in enumerate(names)}
    codes = np.fromiter((lookup.get(v, -1) if v is not None else -1 for v in values), np.int32, len(values))
    return codes, names


@dataclasses.dataclass(frozen=True, eq=False)
class Snapshot:
    """A version as strategies see it: its live rows numbered ``0..size-1`` across its segments.

    ``vectors`` and ``index`` are the one segment's own when the version is one segment with no
    deletions, else views over every segment (``serving/composite.py``); item fields are read row
    by row (``ids[row]``, ``texts[row]``...), and ``row_of`` finds an item id's row.
    """

    pool: str
    version: int
    encoder: str
    vectors: Any  # (n, dim) float32, L2-normalised: an array or a view gathering rows with [rows]
    index: Any  # VectorIndex-like: search(queries, k, allowed) -> D, I over rows
    uids: np.ndarray  # ascending
    ids: Sequence[str]
    texts: Sequence[str | None]
    images: Sequence[str | None]
    media_roots: Sequence[str | None]
    metadata: Sequence[str | None]
    label_codes: np.ndarray
    labels: tuple[str, ...]
    domain_codes: np.ndarray
    domains: tuple[str, ...]
    row_of: Any  # Mapping-like: get(id), ``in``, [id]
    revision: int = 0
    adapter: AdapterView | None = None
    media_dir: Path | None = None  # where images uploaded through the API live
    # per-label search (balanced): ``rows[c]`` and ``search(c, queries, k, allowed)``
    classes: Any = None
    manifest: Manifest | None = None
    space: RowSpace | None = None
    # An image+text pool's image and text vectors (every segment keeps them): requests with fusion
    modalities: ModalityVectors | None = None
    # A centred pool's mean (store/centring.py): queries are centred by it as the rows were
    centre: np.ndarray | None = None

    def image_root(self, row: int) -> Path | None:
        root = self.media_roots[row]
        return Path(root) if root else self.media_dir

    def in_adapter_space(self) -> "Snapshot":
        """The same items with the adapter's vectors, index and class search (the caller checks
        there is one): the adapter space served like the encoder's, approximate where the segments
        are indexed, exact over the mapped adapter vectors where they are not."""
        if self.adapter is None:
            raise Conflict(f"version {self.version} of pool {self.pool!r} has no adapter")
        return dataclasses.replace(self, vectors=self.adapter.vectors, index=self.adapter.index,
                                   classes=self.adapter.class_search(self.label_codes, len(self.labels)))

    def in_fused_space(self, weights: tuple[float, float]) -> "Snapshot":
        """The same items seen by ``weights[0] * cos(image) + weights[1] * cos(text)`` (``fusion.py``);
        409 where the version keeps one vector per item."""
        check_fusion(self)
        assert self.modalities is not None
        vectors, index, classes = self.modalities.weighted(weights)
        return dataclasses.replace(self, vectors=vectors, index=index, classes=classes, adapter=None)

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def label_of(self, row: int) -> str | None:
        code = int(self.label_codes[row])
        return self.labels[code] if code >= 0 else None

    def domain_of(self, row: int) -> str | None:
        code = int(self.domain_codes[row])
        return self.domains[code] if code >= 0 else None

    def metadata_of(self, row: int) -> dict[str, Any]:
        raw = self.metadata[row]
        return json.loads(raw) if raw else {}
