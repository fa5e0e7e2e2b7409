"""Compaction: small segments merged in the background, deleted rows purged.

Every write adds a segment, so without merging a pool would end up as thousands of tiny ones, each
searched on every request. The policy is tiered (after Lucene's): a segment's tier is the order of
magnitude of its live rows; when ``merge_factor`` segments at the tail of the manifest sit at or
below one tier, they are merged into one (which lands a tier up), so a pool of N rows keeps about
``merge_factor x log10(N)`` segments at most. A segment with more than ``max_deleted_fraction`` of
its rows deleted, or one written before segments existed (a version folder), is rewritten on its
own. Only contiguous runs are merged, so rows stay in uid order across the manifest.

A compaction writes its segment beside the others and then swaps the version's manifest for one
with the same items (``Catalog.replace_manifest``): version numbers stay the user's (content
changes only), readers keep the old segments until they reload, and nothing is lost if the process
dies at any point (the new segment is unreferenced and removed later). A write that lands meanwhile
does not fail the compaction: its deletions in the merged segments are carried over to the merged
one and the compaction is applied to the new current version.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from exemplar.retrieval.index.auto import AutoIndexPolicy
from exemplar.retrieval.store.catalog import Catalog, ItemRow, PoolRecord
from exemplar.retrieval.store.manifest import Manifest, SegmentEntry
from exemplar.retrieval.store.segments import ITEM_FIELDS, LoadedSegment, write_segment

__all__ = ["CompactionPolicy", "CompactionResult", "compact", "plan"]


@dataclasses.dataclass(frozen=True)
class CompactionPolicy:
    merge_factor: int = 8
    max_deleted_fraction: float = 0.2
    max_segment_rows: int = 20_000_000  # merges never make a segment larger than this
    rewrite_legacy: bool = True  # migrate version folders from before segments into segments


@dataclasses.dataclass(frozen=True)
class CompactionResult:
    version: int | None
    merged: list[str]
    into: str | None
    rows: int
    purged: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tier(rows: int) -> int:
    return int(math.log10(max(rows, 1)))


def plan(manifest: Manifest, policy: CompactionPolicy = CompactionPolicy(), *, force: bool = False
         ) -> tuple[int, int] | None:
    """The run ``[start, stop)`` of the manifest's segments to merge next, or None. ``force`` (an
    explicit request) also merges whatever follows the largest segment, however few, so that a
    pool ends as its large segment plus at most one more, with no deleted rows outside the large one."""
    entries = manifest.segments
    for i, entry in enumerate(entries):
        legacy = entry.name.startswith("v") and entry.name[1:].isdigit()
        if (legacy and policy.rewrite_legacy) or entry.deleted > policy.max_deleted_fraction * max(entry.rows, 1):
            return i, i + 1
    start = len(entries)
    ceiling = -1
    total = 0
    for i in range(len(entries) - 1, -1, -1):
        live = entries[i].live
        tier = _tier(live)
        if ceiling >= 0 and tier > ceiling or total + live > policy.max_segment_rows:
            break
        ceiling = max(ceiling, tier)
        total += live
        start = i
    if len(entries) - start >= policy.merge_factor:
        return start, len(entries)
    if force and entries:
        largest = max(range(len(entries)), key=lambda i: entries[i].live)
        tail = entries[largest + 1:]
        if len(tail) >= 2 or any(e.deleted for e in tail):
            return largest + 1, len(entries)
    return None


def _live_rows(segment: LoadedSegment, deleted: np.ndarray) -> np.ndarray:
    keep = np.ones(segment.size, bool)
    keep[deleted] = False
    return np.flatnonzero(keep)


def _merged(segments: Sequence[LoadedSegment], live: Sequence[np.ndarray], adapter_ids: Sequence[int]
            ) -> tuple[list[ItemRow], np.ndarray, dict[int, np.ndarray], np.ndarray | None]:
    rows: list[ItemRow] = []
    for segment, keep in zip(segments, live):
        indices = pa.array(keep, pa.int64())
        columns = {name: segment.items.column(name).take(indices).to_pylist() for name in ITEM_FIELDS}
        uids = segment.uids[keep]
        # By name: ItemRow's field order is not the segment file's column order.
        rows += [ItemRow(uid=int(uids[i]), **{name: columns[name][i] for name in ITEM_FIELDS}) for i in range(len(keep))]
    vectors = np.concatenate([np.asarray(s.vectors[k]) for s, k in zip(segments, live)]) if live else np.empty((0, 0))
    adapted = {}
    for adapter_id in adapter_ids:
        matrices = [s.adapter_vectors(adapter_id) for s in segments]
        if all(m is not None for m in matrices):
            adapted[adapter_id] = np.concatenate([np.asarray(m[k]) for m, k in zip(matrices, live)])  # type: ignore[index]
    # Both modality vectors survive a merge only where every merged segment kept them.
    modal = [s.modality_vectors() for s in segments]
    modalities = (np.concatenate([np.asarray(m[k]) for m, k in zip(modal, live)])  # type: ignore[index]
                  if live and all(m is not None for m in modal) else None)
    return rows, vectors, adapted, modalities


def compact(
    catalog: Catalog,
    pool: PoolRecord,
    *,
    segment_dir: Callable[[str], Any],
    read_deletes: Callable[[SegmentEntry], np.ndarray],
    write_deletes: Callable[[str, np.ndarray], str],
    load: Callable[[SegmentEntry], LoadedSegment],
    new_name: Callable[[], str],
    discard: Callable[[str], None],
    index_policy: AutoIndexPolicy = AutoIndexPolicy(),
    policy: CompactionPolicy = CompactionPolicy(),
    check: Callable[[], None] = lambda: None,
    attempts: int = 5,
    force: bool = False,
) -> CompactionResult:
    """Merge the run ``plan`` picks in the pool's current version; see the module docstring."""
    started = time.monotonic()
    pool = catalog.pool(pool.name)
    version = pool.current_version
    if version is None:
        return CompactionResult(None, [], None, 0, 0, 0.0)
    record = catalog.version(pool.id, version)
    if record.manifest is None:
        base = Manifest((SegmentEntry(name=f"v{version}", rows=record.size),))
    else:
        base = Manifest.from_json(record.manifest)
    run = plan(base, policy, force=force)
    if run is None:
        return CompactionResult(version, [], None, 0, 0, round(time.monotonic() - started, 3))
    start, stop = run
    entries = base.segments[start:stop]
    segments = [load(e) for e in entries]
    deleted = [read_deletes(e) for e in entries]
    live = [_live_rows(s, d) for s, d in zip(segments, deleted)]
    # The adapter the manifest carries, and one trained on this very version, both need the merged rows.
    trained = catalog.adapter(pool.id, version)
    adapter_ids = sorted({a for a in (base.adapter, trained.id if trained else None) if a is not None})
    rows, vectors, adapted, modalities = _merged(segments, live, adapter_ids)
    check()
    name = new_name()
    write_segment(segment_dir(name), rows, vectors.reshape(len(rows), pool.dim), index_spec=pool.index,
                  policy=index_policy, adapters={a: (lambda _v, m=m: m) for a, m in adapted.items()},
                  modalities=modalities, centre=segments[0].centre())
    offsets = np.cumsum([0] + [len(k) for k in live])
    merged_names = [e.name for e in entries]
    for _ in range(attempts):
        check()
        pool = catalog.pool(pool.name)
        target = pool.current_version
        if target is None:
            break
        target_record = catalog.version(pool.id, target)
        if target_record.manifest is None and target != version:
            break
        current = Manifest.from_json(target_record.manifest) if target_record.manifest else base
        names = [e.name for e in current.segments]
        # The run must still be there, contiguous, for the merge to stand in for it.
        if names[start:start + len(merged_names)] != merged_names:
            found = [i for i in range(len(names)) if names[i:i + len(merged_names)] == merged_names]
            if not found:
                break
            position = found[0]
        else:
            position = start
        carried: list[np.ndarray] = []
        for entry, was_deleted, seg_live, offset in zip(current.segments[position:position + len(merged_names)],
                                                         deleted, live, offsets):
            now_deleted = read_deletes(entry)
            if not np.isin(was_deleted, now_deleted).all():
                break  # rows the merge left out are live again (a rollback): it cannot stand in
            carried.append(np.flatnonzero(np.isin(seg_live, now_deleted)) + offset)  # deleted meanwhile
        else:
            carried.append(np.empty(0, np.int64))
        if len(carried) != len(merged_names) + 1:
            break
        dropped = np.concatenate(carried) if carried else np.empty(0, np.int64)
        merged_entry = SegmentEntry(name=name, rows=len(rows))
        if len(dropped):
            merged_entry = dataclasses.replace(merged_entry, deletes=write_deletes(name, dropped), deleted=len(dropped))
        segments_after = current.segments[:position] + (merged_entry,) + current.segments[position + len(merged_names):]
        manifest = Manifest(segments_after, current.adapter)
        stats = {**target_record.stats, "index": {**target_record.stats.get("index", {}), "segments": len(segments_after)}}
        if catalog.replace_manifest(pool.id, target, expected=target_record.manifest, manifest=manifest.to_json(),
                                    stats=stats):
            return CompactionResult(target, merged_names, name, len(rows), int(sum(len(d) for d in deleted)),
                                    round(time.monotonic() - started, 3))
    discard(name)  # nothing refers to it
    return CompactionResult(version, [], None, 0, 0, round(time.monotonic() - started, 3))
