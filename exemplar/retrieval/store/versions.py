"""Writing pool versions: manifests over immutable segments (``serving/loading.py`` opens them).

A write adds at most one segment (the new and replaced items) and deletion files (the rows it
removes from older segments), then commits the new manifest in one catalog transaction; nothing
else is copied. A full build (``replace_all``) writes one large segment with its ANN index.
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exemplar.retrieval.index.auto import AutoIndexPolicy
from exemplar.retrieval.store.catalog import Catalog, Fence, ItemRow, PoolRecord, StaleBase
from exemplar.retrieval.store.database import CommitOutcomeUnknown
from exemplar.retrieval.store.centring import centred, first_centre
from exemplar.retrieval.store.files import write_npy_atomic
from exemplar.retrieval.store.manifest import Manifest, SegmentEntry, legacy_manifest
from exemplar.retrieval.store.modalities import split_vectors
from exemplar.retrieval.store.segments import write_segment

if TYPE_CHECKING:  # a write reads its base version as served; the store does not build snapshots
    from exemplar.retrieval.serving.composite import RowSpace
    from exemplar.retrieval.serving.snapshot import Snapshot

__all__ = [
    "VersionFiles",
    "legacy_index_of",
    "manifest_of",
    "new_segment_name",
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
    fence: Fence | None = None,
) -> int:
    """Write ``base`` less the items that ``new_rows`` replace and those in ``remove_ids``, plus
    ``new_rows``, as a new version: one new segment for ``new_rows`` and deletion files for the
    rows removed from ``base``'s segments. ``new_rows`` carry placeholder uids; real ones are
    reserved here. Nothing is visible to readers until the files are durable and the catalog
    transaction commits; a failure leaves the serving version untouched and the reserved version
    marked failed. A commit whose outcome is unknown (the catalog's connection failed during
    COMMIT) keeps its files: the version may have landed, and retention decides from the catalog.
    """
    vectors, modalities = split_vectors(new_vectors, pool.dim, len(new_rows))
    centre = None
    if pool.centre and len(new_rows):
        # Checked before a version number is taken: a refused first write leaves no failed version.
        centre = base.centre if base is not None and not replace_all else None
        if centre is None:
            centre = first_centre(vectors, pool.name)
        vectors = centred(vectors, centre)
    version, first_uid = catalog.reserve_version(pool.id, new_items=len(new_rows), source=source)
    written: list[Path] = []
    try:
        rows = [
            ItemRow(first_uid + i, r.item_id, r.label, r.text, r.image, r.media_root, r.domain, r.metadata)
            for i, r in enumerate(new_rows)
        ]
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
                modalities=modalities, centre=centre,
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
            fence=fence,
        )
    except CommitOutcomeUnknown:
        raise
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
        write_npy_atomic(path, deleted)
        out[p] = dataclasses.replace(entry, deletes=name, deleted=len(deleted))
    # A segment with nothing live left is dropped from the manifest (its files go with the last
    # kept version that lists it).
    return [e for e in out if e.live > 0]



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
