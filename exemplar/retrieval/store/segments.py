"""Immutable segments: the unit a pool version is made of.

A segment folder holds its items in row order:

```
vectors.npy    (n, dim) float32, L2-normalised, memory-mapped when served
uids.npy       (n,) int64, ascending: the item's uid (a new one for every write of an item)
items.arrow    Arrow IPC file (uncompressed, memory-mapped): uid, id, label, domain, text, image,
               media_root, metadata (JSON text), read lazily row by row
ids.npy        (n, 2) uint64, [hash of id, row] sorted by hash: id -> row without loading the ids
index.faiss    an ANN index over vectors.npy, only when the segment is large enough to need one
classes/       per-class search of large segments: the class lists of ``index.faiss`` when it is an
               IVF over codes partitioned by class (``PartitionedClasses``), else one index per
               class (``ClassIndexes``)
adapters/<id>/vectors.npy   the rows mapped through adapter ``id``
segment.json   rows, dim, index factory and parameters, stats
```

Small segments (the few items of an API write) have no index: they are scanned exactly. A version
folder written before segments existed (``versions/<v>/``) reads as a segment too; its items come
from the catalog's ``items`` table (see ``LegacyItems``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from exemplar.retrieval.index.auto import AutoIndexPolicy, build_index, choose_factory, ivf_lists
from exemplar.retrieval.store.catalog import ItemRow
from exemplar.retrieval.index.classes import META as CLASS_META
from exemplar.retrieval.index.classes import ClassIndexes, ClassSearch
from exemplar.retrieval.index.partitioned import KIND as PARTITIONED
from exemplar.retrieval.index.partitioned import PartitionedClasses, build_partitioned, partitionable
from exemplar.retrieval.store.files import publish_dir, write_npy_atomic
from exemplar.retrieval.index.vectors import AUTO, VectorIndex

__all__ = [
    "ITEM_FIELDS",
    "LoadedSegment",
    "SegmentItems",
    "id_hashes",
    "load_segment",
    "segment_factory",
    "write_segment",
]

VECTORS = "vectors.npy"
UIDS = "uids.npy"
ITEMS = "items.arrow"
IDS = "ids.npy"
INDEX = "index.faiss"
CLASSES = "classes"
META = "segment.json"
ADAPTERS = "adapters"

ITEM_FIELDS = ("item_id", "label", "domain", "text", "image", "media_root", "metadata")
_SCHEMA = pa.schema([("uid", pa.int64())] + [(name, pa.string()) for name in ITEM_FIELDS])


def id_hashes(ids: Sequence[str]) -> np.ndarray:
    """64-bit hashes of item ids (stable across processes, unlike ``hash``)."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little") for i in ids),
        np.uint64, len(ids),
    )


def _id_table(ids: Sequence[str]) -> np.ndarray:
    hashes = id_hashes(ids)
    order = np.argsort(hashes, kind="stable")
    return np.stack([hashes[order], order.astype(np.uint64)], axis=1)


def segment_factory(spec: str, n: int, dim: int, policy: AutoIndexPolicy, *, build_requested: bool) -> str | None:
    """The factory of a segment's index, or None when it is scanned exactly.

    A full build uses the pool's own spec. Other segments (additions, compactions' merges) are
    sized by what they hold: the pool's factory was chosen for the whole pool and may not even
    train on fewer vectors, so they get the automatic choice, except that an exact pool ("Flat")
    stays exact and a segment of ``segment_index_rows`` or more gets a small index rather than a
    scan on every query."""
    if build_requested:
        if spec == AUTO:
            factory = choose_factory(n, dim, policy)
            return None if factory == "Flat" else factory
        return None if spec == "Flat" and n * dim * 4 <= policy.exact_max_bytes else spec
    if spec == "Flat":
        return "Flat" if n * dim * 4 > policy.exact_max_bytes else None
    factory = choose_factory(n, dim, policy)
    if factory != "Flat":
        return factory
    if n >= policy.segment_index_rows:
        return f"IVF{ivf_lists(n)},SQ4"
    return None


def write_segment(
    folder: Path, rows: Sequence[ItemRow], vectors: np.ndarray, *, index_spec: str,
    policy: AutoIndexPolicy, build_requested: bool = False,
    adapters: dict[int, Callable[[np.ndarray], np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Write a segment durably at ``folder`` (through a staging folder beside it); returns its
    stats. Its index follows ``needs_index``; the rows of an adapter are written mapped through it."""
    staging = folder.with_name(f".staging-{folder.name}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    try:
        staging.mkdir(parents=True, exist_ok=True)
        np.save(staging / VECTORS, vectors, allow_pickle=False)
        uids = np.fromiter((r.uid for r in rows), np.int64, len(rows))
        np.save(staging / UIDS, uids, allow_pickle=False)
        columns = [pa.array(uids, pa.int64())] + [
            pa.array([getattr(r, name) for r in rows], pa.string()) for name in ITEM_FIELDS
        ]
        with pa.OSFile(str(staging / ITEMS), "wb") as sink, pa.ipc.new_file(sink, _SCHEMA) as writer:
            writer.write_table(pa.Table.from_arrays(columns, schema=_SCHEMA))
        np.save(staging / IDS, _id_table([r.item_id for r in rows]), allow_pickle=False)
        stats: dict[str, Any] = {"rows": len(rows), "dim": int(vectors.shape[1]), "created_at": time.time()}
        factory = segment_factory(index_spec, len(rows), int(vectors.shape[1]), policy, build_requested=build_requested)
        if factory is not None:
            labels = [r.label for r in rows]
            names = sorted({lab for lab in labels if lab is not None})
            codes = _codes(labels, names)
            classes: ClassIndexes | PartitionedClasses
            if names and partitionable(factory):
                index, classes, index_stats = build_partitioned(vectors, codes, len(names), factory, policy)
            else:
                index, index_stats = build_index(vectors, factory, policy)
                classes = ClassIndexes.build(vectors, codes, len(names), approximate=not index.exact, policy=policy)
            index.save(staging / INDEX)
            classes.save(staging / CLASSES, names)
            stats["index"] = {**index_stats, "classes": classes.stats}
        else:
            stats["index"] = {"factory": "Flat", "exact": True, "recall_at_k": 1.0, "params": {},
                              "scan": "exact over the memory-mapped vectors"}
        for adapter_id, apply in (adapters or {}).items():
            write_adapter_vectors(staging, adapter_id, apply(vectors))
        (staging / META).write_text(json.dumps(stats))
        publish_dir(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return stats


def write_adapter_vectors(folder: Path, adapter_id: int, adapted: np.ndarray) -> None:
    write_npy_atomic(folder / ADAPTERS / str(adapter_id) / VECTORS, np.ascontiguousarray(adapted, dtype=np.float32))


def _codes(values: Sequence[str | None], names: Sequence[str]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(names)}
    return np.fromiter((lookup.get(v, -1) if v is not None else -1 for v in values), np.int32, len(values))


class SegmentItems:
    """Item columns of a segment, read row by row from the memory-mapped Arrow file."""

    def __init__(self, table: pa.Table) -> None:
        self._columns = {name: table.column(name) for name in ITEM_FIELDS}
        self._lock = threading.Lock()
        self._cache: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._columns["item_id"])

    def value(self, field: str, row: int) -> Any:  # noqa: ANN401 - a column's Python value
        return self._columns[field][row].as_py()

    def column(self, field: str) -> pa.ChunkedArray:
        return self._columns[field]


class LegacyItems(SegmentItems):
    """The items of a version folder from before segments, from the catalog's rows."""

    def __init__(self, rows: Sequence[ItemRow]) -> None:
        arrays = {name: pa.array([getattr(r, name) for r in rows], pa.string()) for name in ITEM_FIELDS}
        super().__init__(pa.table(arrays))


@dataclasses.dataclass(eq=False)
class LoadedSegment:
    """A segment as a process serves it; shared by every snapshot whose manifest lists it."""

    name: str
    folder: Path
    vectors: np.ndarray  # memory-mapped
    uids: np.ndarray
    items: SegmentItems
    id_table: np.ndarray
    index: VectorIndex | None  # None: scanned exactly
    classes: ClassSearch | None  # None: class rows are scanned exactly
    stats: dict[str, Any]
    _adapters: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def size(self) -> int:
        return len(self.uids)

    def adapter_vectors(self, adapter_id: int) -> np.ndarray | None:
        with self._lock:
            if adapter_id not in self._adapters:
                path = self.folder / ADAPTERS / str(adapter_id) / VECTORS
                if not path.is_file():
                    return None
                self._adapters[adapter_id] = np.load(path, mmap_mode="r", allow_pickle=False)
            return self._adapters[adapter_id]


def load_segment(name: str, folder: Path, *, legacy_rows: Callable[[np.ndarray], Sequence[ItemRow]] | None = None,
                 legacy_index: tuple[str, dict[str, int] | None] | None = None) -> LoadedSegment:
    """Open a segment for serving: vectors and items memory-mapped, the index loaded when there is one.
    A pre-segment version folder needs ``legacy_rows`` (its rows from the catalog) and ``legacy_index``."""
    vectors = np.load(folder / VECTORS, mmap_mode="r", allow_pickle=False)
    uids = np.load(folder / UIDS, allow_pickle=False)
    if (folder / ITEMS).is_file():
        table = pa.ipc.open_file(pa.memory_map(str(folder / ITEMS), "r")).read_all()
        items: SegmentItems = SegmentItems(table)
        id_table = np.load(folder / IDS, allow_pickle=False)
        stats = json.loads((folder / META).read_text())
        factory, params = stats["index"].get("factory", "Flat"), stats["index"].get("params")
    else:
        if legacy_rows is None or legacy_index is None:
            raise RuntimeError(f"segment {name} has no items file and no catalog rows were given")
        rows = legacy_rows(uids)
        items = LegacyItems(rows)
        id_table = _id_table([r.item_id for r in rows])
        factory, params = legacy_index
        stats = {"rows": len(uids), "dim": int(vectors.shape[1]), "legacy": True}
    index = None
    classes = None
    if (folder / INDEX).is_file():
        index = VectorIndex.load(folder / INDEX, factory, params)
        index.vectors = vectors
        index.to_gpu()
        labels = _label_names(items)
        classes = _load_classes(folder / CLASSES, index, vectors, labels)
        if classes is None:  # written before per-class indexes existed
            classes = ClassIndexes.build(vectors, _codes(items.column("label").to_pylist(), labels), len(labels),
                                         approximate=not index.exact)
    return LoadedSegment(name=name, folder=folder, vectors=vectors, uids=uids, items=items, id_table=id_table,
                         index=index, classes=classes, stats=stats)


def _load_classes(folder: Path, index: VectorIndex, vectors: np.ndarray, labels: Sequence[str]
                  ) -> ClassSearch | None:
    """The segment's class search as saved (None when absent or saved for other labels)."""
    if not (folder / CLASS_META).is_file():
        return None
    meta = json.loads((folder / CLASS_META).read_text())
    if meta.get("kind") != PARTITIONED:
        return ClassIndexes.load(folder, vectors, labels)
    if sorted(meta["labels"]) != sorted(labels):
        return None
    return PartitionedClasses.load(folder, meta, index, vectors, labels)


def _label_names(items: SegmentItems) -> list[str]:
    unique = items.column("label").unique().to_pylist()
    return sorted(v for v in unique if v is not None)

