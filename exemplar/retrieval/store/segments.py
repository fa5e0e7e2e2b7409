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
centre.npy     (dim,) float32, in centred pools only: the mean the rows were centred by (``centring.py``)
modalities.npy (n, 2 * dim) float32: the image and the text vector of each row side by side, in
               ``image+text`` pools only (``store/modalities.py``; requests with ``fusion``)
adapters/<id>/vectors.npy   the rows mapped through adapter ``id``
adapters/<id>/index/        the same kind of index over those rows (``index.faiss``, ``classes/``,
               ``index.json``), only when the segment has an index: ``invariant`` searches the
               adapter space as ``topk`` and ``balanced`` search the encoder space
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
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from exemplar.retrieval.index.auto import AutoIndexPolicy, build_index, choose_factory, ivf_lists
from exemplar.retrieval.store.catalog import ItemRow
from exemplar.retrieval.store.centring import CENTRE
from exemplar.retrieval.index.classes import META as CLASS_META
from exemplar.retrieval.index.classes import ClassIndexes, ClassSearch
from exemplar.retrieval.index.partitioned import KIND as PARTITIONED
from exemplar.retrieval.index.partitioned import PartitionedClasses, build_partitioned, partitionable
from exemplar.retrieval.store.files import save_rows, staged_dir, write_npy_atomic
from exemplar.retrieval.index.vectors import AUTO, VectorIndex

__all__ = [
    "ITEM_FIELDS",
    "LoadedSegment",
    "SegmentItems",
    "adapter_factory",
    "id_hashes",
    "index_adapter_vectors",
    "load_segment",
    "segment_factory",
    "write_adapter_index",
    "write_adapter_vectors",
    "write_segment",
]

VECTORS = "vectors.npy"
UIDS = "uids.npy"
ITEMS = "items.arrow"
IDS = "ids.npy"
INDEX = "index.faiss"
CLASSES = "classes"
META = "segment.json"
MODALITY_VECTORS = "modalities.npy"
ADAPTERS = "adapters"
ADAPTER_INDEX = "index"  # adapters/<id>/index/: the adapter space's index, published as one folder
ADAPTER_INDEX_META = "index.json"

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
    modalities: np.ndarray | None = None,
    centre: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write a segment durably at ``folder`` (through a staging folder beside it); returns its
    stats. Its index follows ``needs_index``; the rows of an adapter are written mapped through it;
    ``modalities`` (an ``image+text`` pool's image and text vectors, ``(n, 2 * dim)``) beside them."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    with staged_dir(folder) as staging:
        np.save(staging / VECTORS, vectors, allow_pickle=False)
        if modalities is not None:
            save_rows(staging / MODALITY_VECTORS, modalities)
        if centre is not None:
            np.save(staging / CENTRE, np.asarray(centre, dtype=np.float32), allow_pickle=False)
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
        labels = [r.label for r in rows]
        names = sorted({lab for lab in labels if lab is not None})
        codes = _codes(labels, names)
        if factory is not None:
            stats["index"] = _build_indexes(staging, vectors, codes, names, factory, policy)
        else:
            stats["index"] = {"factory": "Flat", "exact": True, "recall_at_k": 1.0, "params": {},
                              "scan": "exact over the memory-mapped vectors"}
        for adapter_id, apply in (adapters or {}).items():
            adapted = apply(vectors)
            write_adapter_vectors(staging, adapter_id, adapted)
            if factory is not None and factory != "Flat":
                adapter_stats = write_adapter_index(staging, adapter_id, adapted, codes, names, factory, policy)
                stats.setdefault("adapters", {})[str(adapter_id)] = _summary(adapter_stats)
        (staging / META).write_text(json.dumps(stats))
    return stats


def _build_indexes(folder: Path, vectors: np.ndarray, codes: np.ndarray, names: Sequence[str], factory: str,
                   policy: AutoIndexPolicy) -> dict[str, Any]:
    """Build ``factory`` over ``vectors`` and the class search beside it (one IVF partitioned by
    class when the factory allows, else an index per class); save them as ``folder/index.faiss``
    and ``folder/classes/``; returns the index's stats (the classes' under ``"classes"``)."""
    classes: ClassIndexes | PartitionedClasses
    if names and partitionable(factory):
        index, classes, index_stats = build_partitioned(vectors, codes, len(names), factory, policy)
    else:
        index, index_stats = build_index(vectors, factory, policy)
        classes = ClassIndexes.build(vectors, codes, len(names), approximate=not index.exact, policy=policy)
    index.save(folder / INDEX)
    classes.save(folder / CLASSES, names)
    return {**index_stats, "classes": classes.stats}


def _summary(stats: dict[str, Any]) -> dict[str, Any]:
    classes = stats.get("classes") or {}
    return {"factory": stats.get("factory"), "requested": stats.get("requested"), "build_s": stats.get("build_s"),
            "index_s": stats.get("index_s"), "recall_at_k": stats.get("recall_at_k"),
            "class_recall_at_k": classes.get("recall_at_k")}


def write_adapter_vectors(folder: Path, adapter_id: int, adapted: np.ndarray) -> None:
    write_npy_atomic(folder / ADAPTERS / str(adapter_id) / VECTORS, np.ascontiguousarray(adapted, dtype=np.float32))


def adapter_factory(factory: str, n: int, dim: int) -> str:
    """The segment's factory for its rows in an adapter's space: the same one when faiss builds it at
    the adapter's dimension (a PQ's sub-quantisers must divide it), else an IVF over 4-bit codes."""
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        return factory
    except RuntimeError:
        return f"IVF{ivf_lists(n)},SQ4"


def write_adapter_index(folder: Path, adapter_id: int, adapted: np.ndarray, codes: np.ndarray, names: Sequence[str],
                        factory: str, policy: AutoIndexPolicy) -> dict[str, Any]:
    """Index a segment's rows in adapter ``adapter_id``'s space as the segment is indexed in the
    encoder's (``factory``, its label ``codes`` over ``names``, ``policy``): written under
    ``folder/adapters/<id>/index/`` through a staging folder, so it is there whole or not at all.
    Re-scoring reads ``adapters/<id>/vectors.npy`` (mapped); no copy of the rows is kept."""
    data = np.ascontiguousarray(adapted, dtype=np.float32)
    target = folder / ADAPTERS / str(adapter_id) / ADAPTER_INDEX
    started = time.perf_counter()
    with staged_dir(target) as staging:
        chosen = adapter_factory(factory, len(data), int(data.shape[1]))
        stats = _build_indexes(staging, data, codes, names, chosen, policy)
        stats["index_s"] = round(time.perf_counter() - started, 3)
        (staging / ADAPTER_INDEX_META).write_text(json.dumps(stats))
    return stats


def index_adapter_vectors(segment: "LoadedSegment", adapter_id: int, adapted: np.ndarray, policy: AutoIndexPolicy
                          ) -> dict[str, Any] | None:
    """``write_adapter_index`` for a written segment, with the factory its own index was built
    with; None (nothing written) where the segment is scanned exactly."""
    factory = segment.indexed_factory(policy)
    if factory is None:
        return None
    names = _label_names(segment.items)
    codes = _codes(segment.items.column("label").to_pylist(), names)
    return write_adapter_index(segment.folder, adapter_id, adapted, codes, names, factory, policy)


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
    _modalities: np.ndarray | None = None
    _centre: np.ndarray | None = None
    _adapter_indexes: dict[int, tuple[VectorIndex, ClassSearch] | None] = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _index_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def size(self) -> int:
        return len(self.uids)

    def centre(self) -> np.ndarray | None:
        """The mean the rows were centred by (centred pools), else None."""
        with self._lock:
            if self._centre is None:
                path = self.folder / CENTRE
                if not path.is_file():
                    return None
                self._centre = np.load(path, allow_pickle=False)
            return self._centre

    def modality_vectors(self) -> np.ndarray | None:
        """The image and text vectors side by side, ``(n, 2 * dim)``, memory-mapped; None where the
        segment has none (a pool of one modality, or written before they were kept)."""
        with self._lock:
            if self._modalities is None:
                path = self.folder / MODALITY_VECTORS
                if not path.is_file():
                    return None
                self._modalities = np.load(path, mmap_mode="r", allow_pickle=False)
            return self._modalities

    def adapter_vectors(self, adapter_id: int) -> np.ndarray | None:
        with self._lock:
            if adapter_id not in self._adapters:
                path = self.folder / ADAPTERS / str(adapter_id) / VECTORS
                if not path.is_file():
                    return None
                self._adapters[adapter_id] = np.load(path, mmap_mode="r", allow_pickle=False)
            return self._adapters[adapter_id]

    def indexed_factory(self, policy: AutoIndexPolicy = AutoIndexPolicy()) -> str | None:
        """The factory the segment's index was asked for (what its rows in an adapter's space get
        too); None when it is scanned exactly or its index is exact."""
        if self.index is None or self.index.exact:
            return None
        factory = (self.stats.get("index") or {}).get("requested") or self.index.factory
        if factory == AUTO:
            factory = choose_factory(self.size, int(self.vectors.shape[1]), policy)
        return None if factory == "Flat" else factory

    def adapter_index(self, adapter_id: int) -> tuple[VectorIndex, ClassSearch] | None:
        """The index and class search of the rows in adapter ``adapter_id``'s space, loaded on first
        use (inverted lists mapped, re-scored from the mapped adapter vectors); None where the
        segment has none (no index in the encoder space, or an adapter trained before these)."""
        with self._index_lock:
            if adapter_id in self._adapter_indexes:
                return self._adapter_indexes[adapter_id]
            folder = self.folder / ADAPTERS / str(adapter_id) / ADAPTER_INDEX
            vectors = self.adapter_vectors(adapter_id)
            if vectors is None or not (folder / ADAPTER_INDEX_META).is_file():
                return None
            stats = json.loads((folder / ADAPTER_INDEX_META).read_text())
            index = VectorIndex.load(folder / INDEX, stats["factory"], stats.get("params"))
            index.vectors = vectors
            index.to_gpu()
            classes = _load_classes(folder / CLASSES, index, vectors, _label_names(self.items))
            # None too is kept: a class search saved for other labels is not loaded again on every compose
            self._adapter_indexes[adapter_id] = None if classes is None else (index, classes)
            return self._adapter_indexes[adapter_id]


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

