"""Writing and loading immutable pool versions (vectors, row uids and the FAISS index)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from exemplar.retrieval.adapters import load_adapter_view
from exemplar.retrieval.autoindex import AutoIndexPolicy, build_index
from exemplar.retrieval.catalog import Catalog, ItemRow, PoolRecord
from exemplar.retrieval.class_index import ClassIndexes
from exemplar.retrieval.files import publish_dir
from exemplar.retrieval.index import VectorIndex
from exemplar.retrieval.snapshot import Snapshot, label_codes_of

__all__ = ["VersionFiles", "load_snapshot", "write_version"]

VECTORS = "vectors.npy"
UIDS = "uids.npy"
INDEX = "index.faiss"
CLASSES = "classes"


class VersionFiles:
    """Where a pool's files live under the data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "pools"

    def pool_dir(self, pool_id: int) -> Path:
        return self.root / str(pool_id)

    def media_dir(self, pool_id: int) -> Path:
        return self.pool_dir(pool_id) / "media"

    def version_dir(self, pool_id: int, version: int) -> Path:
        return self.pool_dir(pool_id) / "versions" / str(version)

    def staging_dir(self, pool_id: int, version: int) -> Path:
        return self.pool_dir(pool_id) / "versions" / f".staging-{version}"


def _stats(rows_labels: Sequence[str | None], rows_domains: Sequence[str | None]) -> dict[str, dict[str, int]]:
    def hist(values: Sequence[str | None]) -> dict[str, int]:
        counts = Counter("(none)" if v is None else v for v in values)
        return dict(sorted(counts.items()))

    return {"labels": hist(rows_labels), "domains": hist(rows_domains)}


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
    """Write ``base`` (minus the items that ``new_rows`` replace and those in ``remove_ids``) plus
    ``new_rows`` as a new version.

    ``new_rows`` carry placeholder uids; real ones are reserved here. Nothing is visible to readers
    until the files are durable and the catalog transaction commits; a failure leaves the serving
    version untouched and the reserved version marked failed.
    """
    version, first_uid = catalog.reserve_version(pool.id, new_items=len(new_rows), source=source)
    staging = files.staging_dir(pool.id, version)
    final = files.version_dir(pool.id, version)
    try:
        rows = [
            ItemRow(first_uid + i, r.item_id, r.label, r.text, r.image, r.media_root, r.domain, r.metadata)
            for i, r in enumerate(new_rows)
        ]
        replaced = {r.item_id for r in rows} | remove_ids
        if base is not None and base.size:
            keep = np.fromiter((item_id not in replaced for item_id in base.ids), bool, base.size)
            uids = np.concatenate([base.uids[keep], np.fromiter((r.uid for r in rows), np.int64, len(rows))])
            vectors = np.concatenate([np.asarray(base.vectors)[keep], new_vectors]).astype(np.float32, copy=False)
            labels = [base.label_of(i) for i in np.flatnonzero(keep)] + [r.label for r in rows]
            domains = [base.domain_of(i) for i in np.flatnonzero(keep)] + [r.domain for r in rows]
        else:
            uids = np.fromiter((r.uid for r in rows), np.int64, len(rows))
            vectors = np.ascontiguousarray(new_vectors, dtype=np.float32).reshape(len(rows), pool.dim)
            labels = [r.label for r in rows]
            domains = [r.domain for r in rows]
        index, index_stats = build_index(vectors, index_spec or pool.index, index_policy)
        staging.mkdir(parents=True, exist_ok=True)
        np.save(staging / VECTORS, vectors, allow_pickle=False)
        np.save(staging / UIDS, uids, allow_pickle=False)
        index.save(staging / INDEX)
        label_codes, label_names = label_codes_of(labels)
        classes = ClassIndexes.build(vectors, label_codes, len(label_names), approximate=not index.exact,
                                     policy=index_policy)
        classes.save(staging / CLASSES, label_names)
        index_stats = {**index_stats, "classes": classes.stats}
        (staging / "version.json").write_text(
            json.dumps({"version": version, "size": len(uids), "dim": pool.dim, "index": index.factory,
                        "index_params": index.params, "encoder": pool.encoder, "created_at": time.time()})
        )
        publish_dir(staging, final)
        catalog.commit_version(
            pool.id,
            version,
            items=rows,
            size=len(uids),
            index=index.factory,
            stats={**_stats(labels, domains), "index": index_stats},
            activate=activate,
            # A replacement stands on its own; an addition is only right on top of what it read.
            based_on=(base.version if base is not None else None) if activate and not replace_all else "any",
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        catalog.fail_version(pool.id, version)
        raise
    return version


def load_snapshot(catalog: Catalog, files: VersionFiles, pool: PoolRecord, version: int) -> Snapshot:
    folder = files.version_dir(pool.id, version)
    uids = np.load(folder / UIDS, allow_pickle=False)
    vectors = np.load(folder / VECTORS, mmap_mode="r", allow_pickle=False)
    record = catalog.version(pool.id, version)
    index = VectorIndex.load(folder / INDEX, record.index, record.stats.get("index", {}).get("params"))
    index.vectors = vectors
    index.to_gpu()
    rows = catalog.item_rows(pool.id, uids.tolist())
    record = catalog.adapter(pool.id, version)
    adapter = load_adapter_view(folder, record.id) if record is not None else None
    snap = Snapshot.from_rows(
        pool=pool.name, version=version, encoder=pool.encoder, vectors=vectors, index=index, rows=rows,
        revision=pool.revision, adapter=adapter, media_dir=files.media_dir(pool.id),
    )
    classes = ClassIndexes.load(folder / CLASSES, vectors, snap.labels)
    if classes is None:  # a version written before per-class indexes existed
        classes = ClassIndexes.build(vectors, snap.label_codes, len(snap.labels), approximate=not index.exact)
    return dataclasses.replace(snap, classes=classes)
