"""One loaded, immutable pool version: vectors, index and item columns, ready to select from."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exemplar.errors import Conflict
from exemplar.retrieval.adapters import AdapterView
from exemplar.retrieval.catalog import ItemRow
from exemplar.retrieval.class_index import ClassIndexes
from exemplar.retrieval.index import VectorIndex

__all__ = ["Snapshot", "label_codes_of"]


def label_codes_of(values: Sequence[str | None]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes for string values (``-1`` for missing), names sorted for stable codes."""
    names = tuple(sorted({v for v in values if v is not None}))
    lookup = {name: i for i, name in enumerate(names)}
    codes = np.fromiter((lookup.get(v, -1) if v is not None else -1 for v in values), np.int32, len(values))
    return codes, names


@dataclasses.dataclass(frozen=True, eq=False)
class Snapshot:
    pool: str
    version: int
    encoder: str
    vectors: np.ndarray  # (n, dim) float32, L2-normalised, row i <-> uids[i]
    index: VectorIndex
    uids: np.ndarray
    ids: tuple[str, ...]
    texts: tuple[str | None, ...]
    images: tuple[str | None, ...]
    media_roots: tuple[str | None, ...]
    metadata: tuple[str | None, ...]
    label_codes: np.ndarray
    labels: tuple[str, ...]
    domain_codes: np.ndarray
    domains: tuple[str, ...]
    row_of: dict[str, int]
    revision: int = 0
    adapter: AdapterView | None = None
    media_dir: Path | None = None  # where images uploaded through the API live
    # per-label indexes over ``vectors`` (balanced); attached by load_snapshot and in_adapter_space
    classes: ClassIndexes | None = None

    @classmethod
    def from_rows(
        cls, *, pool: str, version: int, encoder: str, vectors: np.ndarray, index: VectorIndex, rows: Sequence[ItemRow],
        revision: int = 0, adapter: AdapterView | None = None, media_dir: Path | None = None,
    ) -> "Snapshot":
        label_codes, labels = label_codes_of([r.label for r in rows])
        domain_codes, domains = label_codes_of([r.domain for r in rows])
        return cls(
            pool=pool,
            version=version,
            encoder=encoder,
            vectors=vectors,
            index=index,
            uids=np.fromiter((r.uid for r in rows), np.int64, len(rows)),
            ids=tuple(r.item_id for r in rows),
            texts=tuple(r.text for r in rows),
            images=tuple(r.image for r in rows),
            media_roots=tuple(r.media_root for r in rows),
            metadata=tuple(r.metadata for r in rows),
            label_codes=label_codes,
            labels=labels,
            domain_codes=domain_codes,
            domains=domains,
            row_of={r.item_id: i for i, r in enumerate(rows)},
            revision=revision,
            adapter=adapter,
            media_dir=media_dir,
        )

    def image_root(self, row: int) -> Path | None:
        root = self.media_roots[row]
        return Path(root) if root else self.media_dir

    def in_adapter_space(self) -> "Snapshot":
        """The same items with the adapter's vectors and index (the caller checks there is one)."""
        if self.adapter is None:
            raise Conflict(f"version {self.version} of pool {self.pool!r} has no adapter")
        return dataclasses.replace(self, vectors=self.adapter.vectors, index=self.adapter.index,
                                   classes=self.adapter.class_indexes(self.label_codes, len(self.labels)))

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
