"""Writing and loading pool versions: manifests over immutable segments.

A write adds at most one segment (the new and replaced items) and deletion files (the rows it
removes from older segments), then commits the new manifest in one catalog transaction; nothing
else is copied. A full build (``replace_all``) writes one large segment with its ANN index.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exemplar.retrieval.adapt.adapters import AdapterView, load_adapter_weights
from exemplar.retrieval.index.auto import AutoIndexPolicy
from exemplar.retrieval.store.catalog import Catalog, ItemRow, PoolRecord, StaleBase
from exemplar.retrieval.store.files import write_bytes_atomic
from exemplar.retrieval.serving.composite import (
    ExactIndex,
    IdLookup,
    ItemColumn,
    Part,
    RowSpace,
    SegmentedClasses,
    SegmentedIndex,
    SegmentedVectors,
)
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.store.manifest import Manifest, SegmentEntry, legacy_manifest
from exemplar.retrieval.store.segments import LoadedSegment, load_segment, write_segment

__all__ = [
    "SegmentCache",
    "VersionFiles",
    "legacy_index_of",
    "load_snapshot",
    "manifest_of",
    "new_segment_name",
    "npy_bytes",
    "read_deletes",
    "write_version",
]


class VersionFiles:
    """Where a pool's files live under the data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "pools"

    def pool_dir(self, pool_id: int) -> Path:
        return self.root / str(pool_id)

    def media_dir(self, pool_id: int) -> Path:
        return self.pool_dir(pool_id) / "media"

    def version_dir(self, pool_id: int, version: int) -> Path:
        """The folder of a version written before segments (its one segment)."""
        return self.pool_dir(pool_id) / "versions" / str(version)

    def segments_dir(self, pool_id: int) -> Path:
        return self.pool_dir(pool_id) / "segments"

    def segment_dir(self, pool_id: int, name: str) -> Path:
        if name.startswith("v") and name[1:].isdigit():
            return self.version_dir(pool_id, int(name[1:]))
        return self.segments_dir(pool_id) / name

    def deletes_dir(self, pool_id: int) -> Path:
        return self.pool_dir(pool_id) / "deletes"

    def adapters_dir(self, pool_id: int) -> Path:
        return self.pool_dir(pool_id) / "adapters"


class SegmentCache:
    """Loaded segments shared by the snapshots of one process (a new version loads only the
    segments it adds)."""

    def __init__(self) -> None:
        self._segments: dict[tuple[int, str], LoadedSegment] = {}
        self._lock = threading.Lock()

    def get(self, pool_id: int, name: str, load: Any) -> LoadedSegment:  # noqa: ANN401 - () -> LoadedSegment
        key = (pool_id, name)
        with self._lock:
            segment = self._segments.get(key)
        if segment is None:
            segment = load()
            with self._lock:
                segment = self._segments.setdefault(key, segment)
        return segment

    def keep_only(self, pool_id: int, names: Iterable[str]) -> None:
        wanted = set(names)
        with self._lock:
            for key in [k for k in self._segments if k[0] == pool_id and k[1] not in wanted]:
                del self._segments[key]

    def forget_pool(self, pool_id: int) -> None:
        self.keep_only(pool_id, ())


def manifest_of(catalog: Catalog, pool_id: int, version: int) -> Manifest:
    record = catalog.version(pool_id, version)
    return Manifest.from_json(record.manifest) if record.manifest else legacy_manifest(version, record.size)


def _hist(values: Iterable[str | None]) -> Counter[str]:
    return Counter("(none)" if v is None else v for v in values)


def _stats_after(base_stats: dict[str, Any], removed: Sequence[tuple[str | None, str | None]],
                 added: Sequence[ItemRow]) -> dict[str, dict[str, int]]:
    out = {}
    for key, position, field in (("labels", 0, "label"), ("domains", 1, "domain")):
        counts = Counter(base_stats.get(key, {}))
        counts.subtract(_hist(r[position] for r in removed))
        counts.update(_hist(getattr(r, field) for r in added))
        out[key] = {k: v for k, v in sorted(counts.items()) if v > 0}
    return out


def write_version(
    catalog: Catalog,
    files: VersionFiles,
    pool: PoolRecord,
    *,
    base: Snapshot | None,
    new_rows: Sequence[ItemRow],
    new_vectors: np.ndarray,
    source: str,
    index_spec: str | None = None,
    index_policy: AutoIndexPolicy = AutoIndexPolicy(),
    activate: bool = True,
    replace_all: bool = False,
    remove_ids: frozenset[str] = frozenset(),
) -> int:
    """Write ``base`` less the items that ``new_rows`` replace and those in ``remove_ids``, plus
    ``new_rows``, as a new version: one new segment for ``new_rows`` and deletion files for the
    rows removed from ``base``'s segments. ``new_rows`` carry placeholder uids; real ones are
    reserved here. Nothing is visible to readers until the files are durable and the catalog
    transaction commits; a failure leaves the serving version untouched and the reserved version
    marked failed.
    """
    version, first_uid = catalog.reserve_version(pool.id, new_items=len(new_rows), source=source)
    written: list[Path] = []
    try:
        rows = [
            ItemRow(first_uid + i, r.item_id, r.label, r.text, r.image, r.media_root, r.domain, r.metadata)
            for i, r in enumerate(new_rows)
        ]
        vectors = np.ascontiguousarray(new_vectors, dtype=np.float32).reshape(len(rows), pool.dim)
        on_top = base is not None and not replace_all
        entries: list[SegmentEntry] = list(base.manifest.segments) if on_top and base.manifest else []
        removed: list[tuple[str | None, str | None]] = []
        if on_top:
            assert base is not None
            found = base.row_of.rows_of(sorted({r.item_id for r in rows} | remove_ids))
            dropped_rows = np.unique(found[found >= 0])
            removed = [(base.label_of(int(r)), base.domain_of(int(r))) for r in dropped_rows]
            entries = _with_deletions(files, pool.id, version, entries, base.space, dropped_rows, written)
        adapter = base.adapter if on_top and base is not None else None
        segment_stats: dict[str, Any] | None = None
        if rows:
            name = f"s{version}"
            folder = files.segment_dir(pool.id, name)
            written.append(folder)
            segment_stats = write_segment(
                folder, rows, vectors, index_spec=index_spec or pool.index, policy=index_policy,
                build_requested=replace_all or base is None,
                adapters={adapter.adapter_id: adapter.adapter.apply} if adapter is not None else None,
            )
            entries.append(SegmentEntry(name=name, rows=len(rows)))
        manifest = Manifest(tuple(entries), adapter.adapter_id if adapter is not None else None)
        if on_top and base is not None:
            base_stats = catalog.version(pool.id, base.version).stats
            stats: dict[str, Any] = {**_stats_after(base_stats, removed, rows),
                                     "index": {**base_stats.get("index", {}), "segments": len(entries)}}
        else:
            stats = {**_stats_after({}, [], rows), "index": {**(segment_stats or {}).get("index", {}), "segments": len(entries)}}
        catalog.commit_version(
            pool.id, version, items=(), size=manifest.size, index=stats["index"].get("factory", "Flat"), stats=stats,
            activate=activate, manifest=manifest.to_json(),
            based_on_revision=base.revision if on_top and base is not None and activate else None,
            # A replacement stands on its own; an addition is only right on top of what it read.
            based_on=(base.version if base is not None else None) if activate and not replace_all else "any",
        )
    except BaseException:
        for path in written:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        catalog.fail_version(pool.id, version)
        raise
    return version


def _with_deletions(files: VersionFiles, pool_id: int, version: int, entries: list[SegmentEntry],
                    space: RowSpace | None, rows: np.ndarray, written: list[Path]) -> list[SegmentEntry]:
    """The entries with ``rows`` (global rows of the base) added to their segments' deletions."""
    if not len(rows) or space is None:
        return entries
    out = list(entries)
    for p, _, local in space.split(rows):
        entry = out[p]
        try:
            previous = read_deletes(files, pool_id, entry)
        except FileNotFoundError:  # a compaction retired the base's segments meanwhile: redo on the new ones
            raise StaleBase("the base version's segments were compacted meanwhile", param="pool") from None
        deleted = np.union1d(previous, local).astype(np.int64)
        name = f"{entry.name}-{version}.npy"
        path = files.deletes_dir(pool_id) / name
        written.append(path)
        write_bytes_atomic(path, npy_bytes(deleted))
        out[p] = dataclasses.replace(entry, deletes=name, deleted=len(deleted))
    # A segment with nothing live left is dropped from the manifest (its files go with the last
    # kept version that lists it).
    return [e for e in out if e.live > 0]


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def read_deletes(files: VersionFiles, pool_id: int, entry: SegmentEntry) -> np.ndarray:
    if entry.deletes is None:
        return np.empty(0, np.int64)
    return np.load(files.deletes_dir(pool_id) / entry.deletes, allow_pickle=False)


def legacy_index_of(catalog: Catalog, pool_id: int, name: str) -> tuple[str, dict[str, int] | None] | None:
    """The index factory and tuned parameters of a segment that is a version from before segments
    (recorded with that version); None for other segments (theirs are in segment.json)."""
    if not (name.startswith("v") and name[1:].isdigit()):
        return None
    record = catalog.version(pool_id, int(name[1:]))
    return record.index, record.stats.get("index", {}).get("params")


def new_segment_name() -> str:
    return f"m{uuid.uuid4().hex[:12]}"


def load_snapshot(catalog: Catalog, files: VersionFiles, pool: PoolRecord, version: int,
                  cache: SegmentCache | None = None) -> Snapshot:
    """Open version ``version`` for serving: its segments (from ``cache`` when already loaded),
    deletions and adapter, composed into one ``Snapshot`` of live rows."""
    cache = cache or SegmentCache()
    record = catalog.version(pool.id, version)
    manifest = Manifest.from_json(record.manifest) if record.manifest else legacy_manifest(version, record.size)
    parts: list[Part] = []
    offset = 0
    for entry in manifest.segments:
        folder = files.segment_dir(pool.id, entry.name)
        segment = cache.get(pool.id, entry.name, lambda folder=folder, name=entry.name: load_segment(
            name, folder, legacy_rows=lambda uids: catalog.item_rows(pool.id, uids.tolist()),
            legacy_index=legacy_index_of(catalog, pool.id, name)))
        deleted = read_deletes(files, pool.id, entry)
        live = None
        if len(deleted):
            keep = np.ones(segment.size, bool)
            keep[deleted] = False
            live = np.flatnonzero(keep)
        part = Part(segment, live, offset)
        parts.append(part)
        offset += part.n_live
    space = RowSpace(parts)
    adapter_record = catalog.adapter(pool.id, version)
    adapter_id = adapter_record.id if adapter_record is not None else manifest.adapter
    return compose(pool, version, manifest, space, files=files, revision=pool.revision, adapter_id=adapter_id)


def _codes(parts: Sequence[Part], field: str) -> tuple[list[np.ndarray], tuple[str, ...], list[list[str]]]:
    """Per part, the global code of every local row's ``field`` value; the sorted global names;
    and each segment's own sorted names."""
    encoded = []
    names: set[str] = set()
    for part in parts:
        column = part.segment.items.column(field).combine_chunks()
        dictionary = column.dictionary_encode()
        values = dictionary.dictionary.to_pylist()
        encoded.append((dictionary.indices, values))
        names.update(values)
    ordered = tuple(sorted(names))
    lookup = {name: i for i, name in enumerate(ordered)}
    out = []
    for indices, values in encoded:
        mapping = np.array([lookup[v] for v in values] + [-1], np.int32)
        raw = indices.fill_null(len(values)).to_numpy(zero_copy_only=False) if len(indices) else np.empty(0, np.int64)
        out.append(mapping[raw.astype(np.int64)] if len(raw) else np.empty(0, np.int32))
    return out, ordered, [sorted(v) for _, v in encoded]


def _live(part: Part, array: np.ndarray) -> np.ndarray:
    return array if part.live is None else array[part.live]


def compose(pool: PoolRecord, version: int, manifest: Manifest, space: RowSpace, *, files: VersionFiles,
            revision: int, adapter_id: int | None) -> Snapshot:
    parts = space.parts
    label_parts, labels, segment_labels = _codes(parts, "label")
    domain_parts, domains, _ = _codes(parts, "domain")
    concat = (lambda arrays, dtype: np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.empty(0, dtype))
    label_codes = concat([_live(p, c) for p, c in zip(parts, label_parts)], np.int32)
    domain_codes = concat([_live(p, c) for p, c in zip(parts, domain_parts)], np.int32)
    uids = concat([_live(p, p.segment.uids) for p in parts], np.int64)
    single = len(parts) == 1 and parts[0].live is None
    if single:
        segment = parts[0].segment
        vectors: Any = segment.vectors
        index: Any = segment.index if segment.index is not None else ExactIndex(segment.vectors)
    else:
        vectors = SegmentedVectors(space, [p.segment.vectors for p in parts], pool.dim)
        index = SegmentedIndex(space, [p.segment.index if p.segment.index is not None else ExactIndex(p.segment.vectors)
                                       for p in parts])
    if single and parts[0].segment.classes is not None and list(segment_labels[0]) == list(labels):
        classes: Any = parts[0].segment.classes
    else:
        classes = SegmentedClasses(space, labels, label_parts, [p.segment.classes for p in parts],
                                   [p.segment.vectors for p in parts], segment_labels)
    adapter = _adapter_view(files, pool.id, version, adapter_id, space) if adapter_id is not None else None
    return Snapshot(
        pool=pool.name, version=version, encoder=pool.encoder, vectors=vectors, index=index, uids=uids,
        ids=ItemColumn(space, "item_id"), texts=ItemColumn(space, "text"), images=ItemColumn(space, "image"),
        media_roots=ItemColumn(space, "media_root"), metadata=ItemColumn(space, "metadata"),
        label_codes=label_codes, labels=labels, domain_codes=domain_codes, domains=domains,
        row_of=IdLookup(space), revision=revision, adapter=adapter, media_dir=files.media_dir(pool.id),
        classes=classes, manifest=manifest, space=space,
    )


def _adapter_view(files: VersionFiles, pool_id: int, version: int, adapter_id: int,
                  space: RowSpace) -> AdapterView | None:
    """The adapter's view over every segment, or None when a segment lacks its vectors (a version
    from before that adapter; ``invariant`` then answers that it needs retraining)."""
    matrices = [p.segment.adapter_vectors(adapter_id) for p in space.parts]
    if any(m is None for m in matrices):
        return None
    # Weights live in the pool's adapters folder; an adapter trained before segments kept them in the
    # folder of the version it was trained on, which is one of this version's segments.
    adapter, info = load_adapter_weights([files.adapters_dir(pool_id) / str(adapter_id)] +
                                         [p.segment.folder / "adapters" / str(adapter_id) for p in space.parts])
    out_dim = adapter.out_dim
    if len(space.parts) == 1 and space.parts[0].live is None:
        vectors: Any = matrices[0]
        index: Any = ExactIndex(matrices[0])
    else:
        vectors = SegmentedVectors(space, matrices, out_dim)  # type: ignore[arg-type]
        index = SegmentedIndex(space, [ExactIndex(m) for m in matrices])  # type: ignore[arg-type]
    return AdapterView(adapter_id=adapter_id, adapter=adapter, vectors=vectors, index=index, info=info)

