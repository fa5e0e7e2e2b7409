"""Pools and their items: create, list, stats, delete, activate versions, add, read and delete items.

Built on the store (what is written) and the snapshot cache (what this process serves); other
services take those directly, never through this one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from exemplar.errors import InvalidRequest, NotFound, choices
from exemplar.retrieval.index.vectors import AUTO, DEFAULT_INDEX
from exemplar.retrieval.ports import EncoderProvider
from exemplar.retrieval.serving.cache import SnapshotCache
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.store.catalog import PoolRecord, VersionRecord
from exemplar.retrieval.store.centring import check_first_write
from exemplar.retrieval.store.items import EMBED_MODES, NewItem, embed_items, item_row, validate_item_fields
from exemplar.retrieval.store.manifest import Manifest, legacy_manifest
from exemplar.retrieval.store.store import PoolStore

__all__ = ["MAX_PAGE", "METRICS", "POOL_NAME", "DeletedItems", "ItemPage", "PoolService", "PoolStats", "StoredItem"]

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
    """The pool and item API over ``store`` (writes) and ``snapshots`` (reads of what is served)."""

    def __init__(self, store: PoolStore, snapshots: SnapshotCache, encoders: EncoderProvider) -> None:
        self.store = store
        self.snapshots = snapshots
        self.encoders = encoders

    # pools ---------------------------------------------------------------------------------------

    def create(self, *, name: str, encoder: str, embed: str = "image", metric: str = "ip", index: str = AUTO,
               centre: bool = False) -> PoolRecord:
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
        return self.store.create_pool(name=name, encoder=enc.spec, embed=embed, metric=metric, index=index, dim=enc.dim,
                                      centre=centre)

    def get(self, name: str) -> PoolRecord:
        return self.store.pool(name)

    def list(self) -> list[PoolRecord]:
        return self.store.pools()

    def stats(self, name: str) -> PoolStats:
        store = self.store
        pool = store.pool(name)
        versions = store.versions(pool.id)
        current = next((v for v in versions if v.version == pool.current_version), None)
        manifest = None
        if current is not None:
            manifest = Manifest.from_json(current.manifest) if current.manifest else legacy_manifest(current.version, current.size)
        # The version's own adapter, else the one its manifest inherited from the version it was written on.
        record = store.adapter(pool.id, current.version) if current else None
        if record is None and manifest is not None and manifest.adapter is not None:
            record = store.adapter_by_id(pool.id, manifest.adapter)
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
        pool = self.store.delete_pool(name)
        self.snapshots.forget(name, pool.id)

    # versions ------------------------------------------------------------------------------------

    def activate(self, name: str, version: int) -> PoolRecord:
        pool = self.store.activate(name, version)
        self.snapshots.snapshot(name)  # load now, so the switch costs no request
        return pool

    def add_items(self, name: str, items: Sequence[NewItem]) -> int:
        """Add or replace ``items`` as one new version. All-or-nothing: any bad item rejects the batch."""
        pool = self.store.pool(name)
        seen: set[str] = set()
        for i, item in enumerate(items):
            validate_item_fields(item, param=f"items[{i}]")
            if item.id in seen:
                raise InvalidRequest(f"item id {item.id!r} appears twice in one request", param=f"items[{i}].id")
            seen.add(item.id)
        if pool.centre:  # refused before anything is encoded or stored, when this write would fix the mean
            current = self.snapshots.current(name)
            if current is None or current.centre is None:
                check_first_write(name, len(items))
        encoder = self.encoders(pool.encoder)
        vectors, kept, errors = embed_items(encoder, pool.embed, items, precomputed=pool.encoder.startswith("precomputed:"))
        if errors:
            raise errors[0].to_exception(f"items[{errors[0].index}]")
        for item in items:
            self.store.store_media(pool, item)
        rows = [item_row(item) for item in items]
        return self.store.write(pool, rows, vectors, bases=self.snapshots, source="api", replace_all=False)

    # items ---------------------------------------------------------------------------------------

    def item(self, name: str, item_id: str) -> StoredItem:
        snap = self.snapshots.current(name)
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
        snap = self.snapshots.current(name)
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
        pool = self.store.pool(name)
        wanted = list(dict.fromkeys(ids))
        snap = self.snapshots.current(name, fresh=True)
        rows = snap.row_of.rows_of(wanted) if snap is not None else np.full(len(wanted), -1)
        present = [i for i, r in zip(wanted, rows) if r >= 0]
        missing = [i for i, r in zip(wanted, rows) if r < 0]
        if not present:
            return DeletedItems(pool.current_version, [], missing)
        # Another writer may remove or add some of them meanwhile: ``write`` redoes the removal on
        # the version that is current then, and an id gone by then is simply not there to remove.
        version = self.store.write(pool, [], np.empty((0, pool.dim), np.float32), bases=self.snapshots,
                                   source="delete", replace_all=False, remove_ids=frozenset(present))
        return DeletedItems(version, present, missing)


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
