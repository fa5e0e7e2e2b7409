"""Pools: create, list, stats, delete, add items, activate versions; the serving snapshot cache."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from exemplar.errors import Conflict, EmptyPool, InvalidRequest, NotFound, choices
from exemplar.retrieval.index.auto import AutoIndexPolicy
from exemplar.retrieval.store.catalog import Catalog, ItemRow, PoolRecord, StaleBase, VersionRecord
from exemplar.retrieval.store.files import write_bytes_atomic
from exemplar.retrieval.index.vectors import AUTO, DEFAULT_INDEX
from exemplar.retrieval.store.items import EMBED_MODES, NewItem, embed_items, media_name, validate_item_fields
from exemplar.retrieval.store.locks import FairLock
from exemplar.retrieval.ports import Encoder, EncoderProvider
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.store.manifest import Manifest, legacy_manifest
from exemplar.retrieval.store.retention import collect_garbage
from exemplar.retrieval.serving.loading import SegmentCache, load_snapshot
from exemplar.retrieval.store.versions import VersionFiles, write_version

__all__ = ["METRICS", "POOL_NAME", "DeletedItems", "ItemPage", "PoolService", "PoolStats", "StoredItem", "item_row"]

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 5
POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
METRICS: tuple[str, ...] = ("ip",)


@dataclasses.dataclass(frozen=True)
class PoolStats:
    pool: PoolRecord
    size: int
    labels: dict[str, int]
    domains: dict[str, int]
    versions: list[VersionRecord]
    adapter: dict[str, Any] | None
    segments: int = 0  # in the current version
    deleted: int = 0  # rows of its segments deleted and not yet purged by compaction


@dataclasses.dataclass(frozen=True)
class StoredItem:
    """An item as the current version holds it."""

    id: str
    label: str | None
    text: str | None
    image: str | None
    domain: str | None
    metadata: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ItemPage:
    """One page of a pool's items in a stable order (oldest write first); ``next_cursor`` continues it."""

    version: int | None
    items: list[StoredItem]
    matching: int  # items of the version that pass the filters, on every page
    next_cursor: str | None


@dataclasses.dataclass(frozen=True)
class DeletedItems:
    version: int | None  # the version without them (unchanged when none of the ids was there)
    deleted: list[str]
    missing: list[str]


MAX_PAGE = 1000


class PoolService:
    """The pool store. Writes are serialised per process; the catalog serialises processes."""

    def __init__(self, data_dir: Path, encoders: EncoderProvider, *, refresh_s: float = 1.0,
                 index_policy: AutoIndexPolicy = AutoIndexPolicy(), keep_versions: int = 0) -> None:
        self.data_dir = data_dir
        self.index_policy = index_policy
        self.catalog = Catalog(data_dir / "catalog.sqlite3")
        self.files = VersionFiles(data_dir)
        self.segments = SegmentCache()
        self.encoders = encoders
        self.refresh_s = refresh_s
        self.keep_versions = keep_versions
        self._write_lock = FairLock()  # writes and activations in arrival order
        self._load_lock = threading.Lock()
        # name -> (snapshot, when it was last checked against the catalog, pool id)
        self._serving: dict[str, tuple[Snapshot, float, int]] = {}
        self._after_write: list[Callable[[str], object]] = []
        self._cleanup()

    def close(self) -> None:
        self.catalog.close()

    def _cleanup(self) -> None:
        """Fail builds whose process died and remove files no kept version uses (staging folders
        of writes that died, segments of failed or pruned versions, pools that were deleted)."""
        for pool_id, version in self.catalog.abandon_dead_builds():
            log.warning("pool %s: version %s was left half-built by a dead process; marked failed", pool_id, version)
        known = {p.id for p in self.catalog.pools()}
        if not self.files.root.is_dir():
            return
        for pool_dir in self.files.root.iterdir():
            if not pool_dir.name.isdigit() or int(pool_dir.name) not in known:
                shutil.rmtree(pool_dir, ignore_errors=True)
        for pool_id in known:
            collect_garbage(self.catalog, self.files, pool_id)

    # pools ---------------------------------------------------------------------------------------

    def create(self, *, name: str, encoder: str, embed: str = "image", metric: str = "ip", index: str = AUTO) -> PoolRecord:
        if not POOL_NAME.match(name):
            raise InvalidRequest(
                "pool name must be 1-64 characters of letters, digits, '_', '-' or '.', starting with a letter or digit",
                param="name",
            )
        if embed not in EMBED_MODES:
            raise InvalidRequest(f"unknown embed mode {embed!r}; valid: {choices(EMBED_MODES)}", param="embed")
        if metric not in METRICS:
            raise InvalidRequest(f"unknown metric {metric!r}; valid: {choices(METRICS)}", param="metric")
        enc = self.encoders(encoder)
        if index != AUTO:
            try:
                faiss.index_factory(enc.dim, index, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError:
                raise InvalidRequest(
                    f"invalid faiss index factory string {index!r}; e.g. 'auto', '{DEFAULT_INDEX}', 'IVF1024,Flat', 'HNSW32'",
                    param="index",
                ) from None
        return self.catalog.create_pool(name=name, encoder=enc.spec, embed=embed, metric=metric, index=index, dim=enc.dim)

    def get(self, name: str) -> PoolRecord:
        return self.catalog.pool(name)

    def list(self) -> list[PoolRecord]:
        return self.catalog.pools()

    def stats(self, name: str) -> PoolStats:
        pool = self.catalog.pool(name)
        versions = self.catalog.versions(pool.id)
        current = next((v for v in versions if v.version == pool.current_version), None)
        manifest = None
        if current is not None:
            manifest = Manifest.from_json(current.manifest) if current.manifest else legacy_manifest(current.version, current.size)
        # The version's own adapter, else the one its manifest inherited from the version it was written on.
        record = self.catalog.adapter(pool.id, current.version) if current else None
        if record is None and manifest is not None and manifest.adapter is not None:
            record = self.catalog.adapter_by_id(pool.id, manifest.adapter)
        adapter = None
        if record is not None:
            adapter = {"id": record.id, "version": record.version, "created_at": record.created_at,
                       **{k: v for k, v in record.info.items() if k != "history"}}
        return PoolStats(
            segments=len(manifest.segments) if manifest else 0,
            deleted=sum(s.deleted for s in manifest.segments) if manifest else 0,
            pool=pool,
            size=current.size if current else 0,
            labels=current.stats.get("labels", {}) if current else {},
            domains=current.stats.get("domains", {}) if current else {},
            versions=versions,
            adapter=adapter,
        )

    def delete(self, name: str) -> None:
        with self._write_lock:
            pool = self.catalog.delete_pool(name)
            self._serving.pop(name, None)
            self.segments.forget_pool(pool.id)
            shutil.rmtree(self.files.pool_dir(pool.id), ignore_errors=True)

    def encoder_for(self, pool: PoolRecord) -> Encoder:
        return self.encoders(pool.encoder)

    # versions ------------------------------------------------------------------------------------

    def activate(self, name: str, version: int) -> PoolRecord:
        with self._write_lock:
            pool = self.catalog.pool(name)
            self.catalog.activate(pool.id, version)
            self._serving.pop(name, None)
        self.snapshot(name)  # load now, so the switch costs no request
        return self.catalog.pool(name)

    def add_items(self, name: str, items: Sequence[NewItem]) -> int:
        """Add or replace ``items`` as one new version. All-or-nothing: any bad item rejects the batch."""
        pool = self.catalog.pool(name)
        seen: set[str] = set()
        for i, item in enumerate(items):
            validate_item_fields(item, param=f"items[{i}]")
            if item.id in seen:
                raise InvalidRequest(f"item id {item.id!r} appears twice in one request", param=f"items[{i}].id")
            seen.add(item.id)
        encoder = self.encoder_for(pool)
        vectors, kept, errors = embed_items(encoder, pool.embed, items, precomputed=pool.encoder.startswith("precomputed:"))
        if errors:
            raise errors[0].to_exception(f"items[{errors[0].index}]")
        for item in items:
            self.store_media(pool, item)
        rows = [item_row(item) for item in items]
        return self.write(pool, rows, vectors, source="api", replace_all=False)

    def store_media(self, pool: PoolRecord, item: NewItem) -> None:
        """Keep image bytes that came with an item (uploads, Parquet, WebDataset) in the pool's media
        folder, content-addressed, and point the item at them."""
        if item.image_bytes is None:
            return
        item.image = media_name(item.image_bytes)
        item.media_root = None
        target = self.files.media_dir(pool.id) / item.image
        if not target.exists():
            write_bytes_atomic(target, item.image_bytes)

    def write(self, pool: PoolRecord, rows: Sequence[ItemRow], vectors: Any, *, source: str, replace_all: bool,
              index_spec: str | None = None, remove_ids: frozenset[str] = frozenset()) -> int:
        """Write ``rows`` as a new current version: on top of the current one (less ``remove_ids``),
        or (``replace_all``) alone. Another process may make a version current meanwhile; the change
        is then redone on top of that one, so neither writer's items go missing from the current version."""
        for _ in range(WRITE_ATTEMPTS):
            with self._write_lock:
                pool = self.catalog.pool(pool.name)
                base = None if replace_all else self._current(pool.name, fresh=True)
                try:
                    version = write_version(
                        self.catalog, self.files, pool, base=base, new_rows=rows, new_vectors=vectors,
                        source=source, index_spec=index_spec, index_policy=self.index_policy, replace_all=replace_all,
                        remove_ids=remove_ids,
                    )
                except StaleBase:
                    log.info("pool %s: the current version changed during a write; writing again on top of it", pool.name)
                    continue
                finally:
                    self._serving.pop(pool.name, None)
                self._prune(pool.id)
            for callback in self._after_write:
                try:
                    callback(pool.name)
                except Exception:  # noqa: BLE001 - upkeep must never fail the write it follows
                    log.exception("pool %s: a post-write task failed", pool.name)
            return version
        raise Conflict(f"pool {pool.name!r} kept changing while this write was made; retry it", param="pool")

    # items ---------------------------------------------------------------------------------------

    def item(self, name: str, item_id: str) -> StoredItem:
        snap = self._current(name)
        row = snap.row_of.get(item_id) if snap is not None else None
        if snap is None or row is None:
            raise NotFound(f"item {item_id!r} is not in the current version of pool {name!r}", param="item_id")
        return _stored_item(snap, row)

    def list_items(self, name: str, *, labels: Sequence[str] | None = None, domains: Sequence[str] | None = None,
                   limit: int = 100, cursor: str | None = None) -> ItemPage:
        """Items of the current version, oldest write first. Rows are kept in the order of their
        uids (assigned increasingly at each write), so a cursor (the last uid seen) stays valid
        across versions: later additions come at the end, and a replaced item moves there."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}", param="limit")
        after = _decode_cursor(cursor)
        snap = self._current(name)
        if snap is None:
            return ItemPage(None, [], 0, None)
        mask = np.ones(snap.size, bool)
        for wanted, codes, names in ((labels, snap.label_codes, snap.labels), (domains, snap.domain_codes, snap.domains)):
            if wanted:
                lookup = {n: c for c, n in enumerate(names)}
                mask &= np.isin(codes, [lookup[w] for w in wanted if w in lookup])
        start = int(np.searchsorted(snap.uids, after, side="right")) if after is not None else 0
        rows = np.flatnonzero(mask[start:])[: limit + 1] + start
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(int(snap.uids[rows[-1]])) if more else None
        return ItemPage(snap.version, [_stored_item(snap, int(r)) for r in rows], int(mask.sum()), next_cursor)

    def delete_items(self, name: str, ids: Sequence[str]) -> DeletedItems:
        """Remove ``ids`` from the pool as one new version; ids it does not hold are reported, and
        when it holds none of them nothing is written."""
        if not ids:
            raise InvalidRequest("no ids given", param="ids")
        pool = self.catalog.pool(name)
        wanted = list(dict.fromkeys(ids))
        snap = self._current(name, fresh=True)
        rows = snap.row_of.rows_of(wanted) if snap is not None else np.full(len(wanted), -1)
        present = [i for i, r in zip(wanted, rows) if r >= 0]
        missing = [i for i, r in zip(wanted, rows) if r < 0]
        if not present:
            return DeletedItems(pool.current_version, [], missing)
        # Another writer may remove or add some of them meanwhile: ``write`` redoes the removal on
        # the version that is current then, and an id gone by then is simply not there to remove.
        version = self.write(pool, [], np.empty((0, pool.dim), np.float32), source="delete",
                             replace_all=False, remove_ids=frozenset(present))
        return DeletedItems(version, present, missing)

    def on_write(self, callback: Callable[[str], object]) -> None:
        """Call ``callback(pool name)`` after every committed write (compaction hooks in here)."""
        self._after_write.append(callback)

    def collect_garbage(self, pool_id: int) -> list[str]:
        return collect_garbage(self.catalog, self.files, pool_id)

    def _prune(self, pool_id: int) -> None:
        """Mark ready versions beyond the newest ``keep_versions`` (never the current one) pruned
        (their catalog rows stay, so the history still reads true) and remove the segments and
        deletion files that no kept version uses any more."""
        if self.keep_versions:
            self.catalog.prune_versions(pool_id, keep=self.keep_versions)
        collect_garbage(self.catalog, self.files, pool_id)

    # serving -------------------------------------------------------------------------------------

    def snapshot(self, name: str, *, allow_empty: bool = False) -> Snapshot:
        """The current version of ``name``, loaded once and re-checked against the catalog every
        ``refresh_s`` seconds so that builds by other processes are picked up without a restart."""
        snap = self._current(name)
        if snap is None:
            raise EmptyPool(f"pool {name!r} has no items yet: add items or build it first", param="pool")
        if snap.size == 0 and not allow_empty:
            raise EmptyPool(f"pool {name!r} is empty", param="pool")
        return snap

    def _current(self, name: str, *, fresh: bool = False) -> Snapshot | None:
        now = time.monotonic()
        cached = self._serving.get(name)
        if not fresh and cached is not None and now - cached[1] < self.refresh_s:
            return cached[0]
        with self._load_lock:
            pool = self.catalog.pool(name)
            cached = self._serving.get(name)
            if pool.current_version is None:
                self._serving.pop(name, None)
                return None
            if cached is not None and cached[2] == pool.id and cached[0].revision == pool.revision:
                snap = cached[0]
            else:
                try:
                    snap = load_snapshot(self.catalog, self.files, pool, pool.current_version, self.segments)
                except FileNotFoundError:
                    # Read the manifest just before a compaction swapped it and retention removed
                    # the segments it listed: the catalog now lists their replacement.
                    pool = self.catalog.pool(name)
                    if pool.current_version is None:
                        return None
                    snap = load_snapshot(self.catalog, self.files, pool, pool.current_version, self.segments)
                if snap.manifest is not None:
                    self.segments.keep_only(pool.id, (s.name for s in snap.manifest.segments))
            self._serving[name] = (snap, now, pool.id)
            return snap

    def load_all(self) -> None:
        """Load every pool's current version (start-up), so the first requests pay nothing."""
        for pool in self.catalog.pools():
            if pool.current_version is not None:
                try:
                    self.snapshot(pool.name, allow_empty=True)
                except Exception:  # noqa: BLE001 - one broken pool must not keep the others down
                    log.exception("pool %s: cannot load version %s", pool.name, pool.current_version)


def item_row(item: NewItem) -> ItemRow:
    """The catalog row for a new item (its uid is assigned when the version is written)."""
    return ItemRow(
        uid=-1,
        item_id=item.id,
        label=item.label,
        text=item.text,
        image=item.image,
        media_root=item.media_root,
        domain=item.domain,
        metadata=json.dumps(item.metadata) if item.metadata else None,
    )


def _stored_item(snap: Snapshot, row: int) -> StoredItem:
    return StoredItem(id=snap.ids[row], label=snap.label_of(row), text=snap.texts[row], image=snap.images[row],
                      domain=snap.domain_of(row), metadata=snap.metadata_of(row))


def _encode_cursor(uid: int) -> str:
    # A position, not a secret: the uid of the last item of the page (any such number is a valid
    # place to continue from, which is what the API documents).
    return str(uid)


def _decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 19:
        raise InvalidRequest("cursor must be the next_cursor of a page (a decimal number)", param="cursor")
    return int(cursor)
