"""Opening a version for serving: its segments (shared between versions), deletions and adapter,
composed into one ``Snapshot`` of live rows."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from exemplar.retrieval.adapt.adapters import AdapterView, load_adapter_weights
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
from exemplar.retrieval.serving.fusion import ModalityVectors
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.store.catalog import Catalog, PoolRecord
from exemplar.retrieval.store.manifest import Manifest, legacy_manifest
from exemplar.retrieval.store.segments import LoadedSegment, load_segment
from exemplar.retrieval.store.versions import VersionFiles, legacy_index_of, read_deletes

__all__ = ["SegmentCache", "compose", "load_snapshot"]


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

    def names(self) -> dict[int, list[str]]:
        """The segments loaded, by pool id (what this process serves)."""
        out: dict[int, list[str]] = {}
        with self._lock:
            for pool_id, name in self._segments:
                out.setdefault(pool_id, []).append(name)
        return {pool_id: sorted(names) for pool_id, names in out.items()}

    def keep_only(self, pool_id: int, names: Iterable[str]) -> None:
        wanted = set(names)
        with self._lock:
            for key in [k for k in self._segments if k[0] == pool_id and k[1] not in wanted]:
                del self._segments[key]

    def forget_pool(self, pool_id: int) -> None:
        self.keep_only(pool_id, ())


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
    adapter = (_adapter_view(files, pool.id, adapter_id, space, labels, label_parts, segment_labels)
               if adapter_id is not None else None)
    modalities = _modality_vectors(space, pool.dim, labels, label_parts, segment_labels)
    centre = _centre(space)
    return Snapshot(
        pool=pool.name, version=version, encoder=pool.encoder, vectors=vectors, index=index, uids=uids,
        ids=ItemColumn(space, "item_id"), texts=ItemColumn(space, "text"), images=ItemColumn(space, "image"),
        media_roots=ItemColumn(space, "media_root"), metadata=ItemColumn(space, "metadata"),
        label_codes=label_codes, labels=labels, domain_codes=domain_codes, domains=domains,
        row_of=IdLookup(space), revision=revision, adapter=adapter, media_dir=files.media_dir(pool.id),
        classes=classes, manifest=manifest, space=space, modalities=modalities, centre=centre,
    )


def _centre(space: RowSpace) -> np.ndarray | None:
    """The mean a centred version's rows were centred by; every segment of a version has the same
    (writes on top keep their base's, compaction copies it)."""
    centres = [p.segment.centre() for p in space.parts]
    if not centres or centres[0] is None:
        return None
    if any(c is None or not np.array_equal(c, centres[0]) for c in centres[1:]):
        names = ", ".join(p.segment.name for p in space.parts)
        raise RuntimeError(f"the segments {names} of one version were centred by different means")
    return centres[0]


def _modality_vectors(space: RowSpace, dim: int, labels: Sequence[str], label_parts: Sequence[np.ndarray],
                      segment_labels: Sequence[Sequence[str]]) -> ModalityVectors | None:
    """The image and text vectors of every live row, or None when a segment lacks them (a pool of
    one modality, or a segment written before they were kept): scanned exactly, class by class too."""
    matrices = [p.segment.modality_vectors() for p in space.parts]
    if not matrices or any(m is None for m in matrices):
        return None
    width = 2 * dim
    if len(space.parts) == 1 and space.parts[0].live is None:
        vectors: Any = matrices[0]
        index: Any = ExactIndex(matrices[0])  # type: ignore[arg-type]
    else:
        vectors = SegmentedVectors(space, matrices, width)  # type: ignore[arg-type]
        index = SegmentedIndex(space, [ExactIndex(m) for m in matrices])  # type: ignore[arg-type]
    return ModalityVectors(vectors=vectors, index=index, dim=dim, make_classes=lambda: SegmentedClasses(
        space, labels, label_parts, [None] * len(matrices), matrices, segment_labels))  # type: ignore[arg-type]


def _adapter_view(files: VersionFiles, pool_id: int, adapter_id: int, space: RowSpace, labels: Sequence[str],
                  label_parts: Sequence[np.ndarray], segment_labels: Sequence[Sequence[str]]) -> AdapterView | None:
    """The adapter's view over every segment, or None when a segment lacks its vectors (a version
    from before that adapter; ``invariant`` then answers that it needs retraining).

    Composed as ``compose`` composes the encoder space: a segment's index and class search in the
    adapter space where it has them (``adapters/<id>/index/``, loaded on first use), else an exact
    scan of its mapped adapter vectors (a small segment, or an adapter trained before those indexes
    existed); one segment without deletions serves its own directly."""
    matrices = [p.segment.adapter_vectors(adapter_id) for p in space.parts]
    if any(m is None for m in matrices):
        return None
    # Weights live in the pool's adapters folder; an adapter trained before segments kept them in the
    # folder of the version it was trained on, which is one of this version's segments.
    adapter, info = load_adapter_weights([files.adapters_dir(pool_id) / str(adapter_id)] +
                                         [p.segment.folder / "adapters" / str(adapter_id) for p in space.parts])
    indexed = [p.segment.adapter_index(adapter_id) for p in space.parts]
    out_dim = adapter.out_dim
    single = len(space.parts) == 1 and space.parts[0].live is None
    if single:
        vectors: Any = matrices[0]
        index: Any = indexed[0][0] if indexed[0] is not None else ExactIndex(matrices[0])  # type: ignore[arg-type]
    else:
        vectors = SegmentedVectors(space, matrices, out_dim)  # type: ignore[arg-type]
        index = SegmentedIndex(space, [found[0] if found is not None else ExactIndex(m)  # type: ignore[arg-type]
                                       for found, m in zip(indexed, matrices)])
    if single and indexed[0] is not None and list(segment_labels[0]) == list(labels):
        classes: Any = indexed[0][1]
    else:
        # A part without a class search in the adapter space is scanned exactly, class by class,
        # over its mapped adapter vectors: no copy of them is held.
        classes = SegmentedClasses(space, labels, label_parts, [found[1] if found is not None else None
                                                                for found in indexed],
                                   matrices, segment_labels)  # type: ignore[arg-type]
    return AdapterView(adapter_id=adapter_id, adapter=adapter, vectors=vectors, index=index, info=info,
                       classes=classes)
