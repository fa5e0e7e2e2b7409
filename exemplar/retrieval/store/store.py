"""The store object: the catalog and files of one data directory, and the one way services read and
change them (committed writes with their retries, media, retention, after-write upkeep)."""

from __future__ import annotations

import logging
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from exemplar.errors import Conflict
from exemplar.retrieval.index.auto import AutoIndexPolicy
from exemplar.retrieval.ports import CurrentVersions
from exemplar.retrieval.store.catalog import (
    DEFAULT_LEASE_S,
    AdapterRecord,
    Catalog,
    Fence,
    ItemRow,
    PoolRecord,
    ReplicaRecord,
    StaleBase,
    VersionRecord,
)
from exemplar.retrieval.store.files import write_bytes_atomic
from exemplar.retrieval.store.items import NewItem, media_name
from exemplar.retrieval.store.locks import FairLock
from exemplar.retrieval.store.manifest import Manifest
from exemplar.retrieval.store.retention import RetentionPolicy, collect_garbage
from exemplar.retrieval.store.versions import VersionFiles, manifest_of, write_version

__all__ = ["WRITE_ATTEMPTS", "PoolStore"]

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 20
"""Tries of a write whose base another writer replaced meanwhile (with replicas writing one pool
at once, each try may lose the race to another replica's; they back off with jitter)."""

PoolCallback = Callable[[str], object]


class PoolStore:
    """The catalog and files of ``data_dir``. Writes and activations are serialised per process in
    arrival order; the catalog serialises processes (a write derived from a version that is no
    longer current is redone on top of the new one).

    ``catalog`` and ``files`` stay public for the store's own modules and the loaders that take
    them as arguments (``serving.loading.load_snapshot``, ``JobService``, compaction); other
    services use the named methods below.
    """

    def __init__(self, data_dir: Path, *, index_policy: AutoIndexPolicy = AutoIndexPolicy(),
                 keep_versions: int = 0, catalog_url: str | None = None, lease_s: float = DEFAULT_LEASE_S,
                 retention_grace_s: float | None = None) -> None:
        self.data_dir = data_dir
        self.index_policy = index_policy
        self.keep_versions = keep_versions
        self.catalog = Catalog(catalog_url, data_dir=data_dir, lease_s=lease_s)
        # One host (SQLite): POSIX keeps a removed file readable while mapped, so nothing waits.
        # Shared (PostgreSQL, a network file system): another host's mapping is not protected.
        self.retention = RetentionPolicy.for_catalog(self.catalog, grace_s=retention_grace_s)
        self.files = VersionFiles(data_dir)
        self._write_lock = FairLock()  # writes and activations in arrival order
        self._after_write: list[PoolCallback] = []
        self._on_change: list[PoolCallback] = []
        self._serving: Callable[[], dict[int, list[str]]] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by the change listener (PostgreSQL's NOTIFY)
        self._listener: threading.Thread | None = None
        self._cleanup()
        self._heart = threading.Thread(target=self._beat, name="exemplar-replica-heartbeat", daemon=True)
        self._heart.start()

    def close(self) -> None:
        self._stop.set()
        self._heart.join(5.0)
        if self._listener is not None:
            self._listener.join(5.0)
        self.catalog.close()

    # presence ------------------------------------------------------------------------------------

    def report_serving(self, serving: Callable[[], dict[int, list[str]]]) -> None:
        """Tell the store what this process serves (pool id -> segment names), for its heartbeat:
        retention on a shared catalog keeps every file a live replica serves."""
        self._serving = serving

    def wait_for_change(self, timeout_s: float, stop: threading.Event) -> bool:
        """Wait up to ``timeout_s`` for another process to commit a change (a hint: True when
        notified; the caller polls the revisions either way), or until ``stop``."""
        if self.catalog.shared and self._listener is None:
            self._listener = threading.Thread(target=self.catalog.db.listen, args=(self._stop, self._wake),
                                              name="exemplar-catalog-listen", daemon=True)
            self._listener.start()
        deadline = time.monotonic() + timeout_s
        while not stop.is_set() and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._wake.wait(min(left, 0.1)):
                self._wake.clear()
                return True
        return False

    def _beat(self) -> None:
        """Renew this replica's lease every ``lease_s / 4``; now and then, sweep what dead
        replicas left (builds they held, files past the retention grace)."""
        pause = max(self.catalog.lease_s / 4, 0.1)
        rounds = 0
        while not self._stop.wait(pause):
            rounds += 1
            try:
                self.catalog.heartbeat(self._serving() if self._serving is not None else None)
                if rounds % 8 == 0:
                    self.sweep()
            except Exception:  # noqa: BLE001 - e.g. the database restarting: the next beat tries again
                log.warning("replica heartbeat failed; trying again in %.2f s", pause, exc_info=True)

    def sweep(self) -> None:
        """Fail builds and adapters whose replica's lease ran out, and remove retired files whose
        grace has passed (on a shared catalog nothing else would remove them after the last write)."""
        for pool_id, version in self.catalog.abandon_dead_builds():
            log.warning("pool %s: version %s was left half-built by a replica that stopped; marked failed",
                        pool_id, version)
        if self.retention.grace_s > 0:
            for pool in self.catalog.pools():
                collect_garbage(self.catalog, self.files, pool.id, self.retention)

    # reads ---------------------------------------------------------------------------------------

    def pool(self, name: str) -> PoolRecord:
        return self.catalog.pool(name)

    def pools(self) -> list[PoolRecord]:
        """Every pool, with its current version and revision, in one catalog query."""
        return self.catalog.pools()

    def replicas(self) -> list[ReplicaRecord]:
        """The processes registered in the catalog (this one included), oldest first; a replica whose
        lease ran out is listed until the sweep forgets it."""
        return self.catalog.replicas()

    @property
    def replica_id(self) -> str:
        return self.catalog.replica_id

    @property
    def catalog_dialect(self) -> str:
        return self.catalog.db.dialect

    def now(self) -> float:
        """The catalog's clock (the database's, on a shared catalog): leases are read against it."""
        return self.catalog.now()

    def versions(self, pool_id: int) -> list[VersionRecord]:
        return self.catalog.versions(pool_id)

    def version(self, pool_id: int, version: int) -> VersionRecord:
        return self.catalog.version(pool_id, version)

    def manifest(self, pool_id: int, version: int) -> Manifest:
        """The version's segments and deletions (a version from before segments reads as one)."""
        return manifest_of(self.catalog, pool_id, version)

    def adapter(self, pool_id: int, version: int) -> AdapterRecord | None:
        """The adapter trained for ``version`` itself, if any."""
        return self.catalog.adapter(pool_id, version)

    def adapter_by_id(self, pool_id: int, adapter_id: int) -> AdapterRecord | None:
        return self.catalog.adapter_by_id(pool_id, adapter_id)

    def adapted_versions(self, pool_id: int) -> list[int]:
        return self.catalog.adapted_versions(pool_id)

    def adapter_ids(self, pool_id: int, version: int) -> list[int]:
        """Every adapter ever committed for ``version`` (the newest replaces the others)."""
        return self.catalog.adapter_ids(pool_id, version)

    def inherited_adapters(self, pool_id: int) -> set[int]:
        """Adapters that the manifest of a kept version (not failed, not pruned) carries."""
        return {m["adapter"] for _, state, m in self.catalog.version_manifests(pool_id)
                if m is not None and state not in ("failed", "pruned") and m.get("adapter") is not None}

    def pool_dir(self, pool_id: int) -> Path:
        return self.files.pool_dir(pool_id)

    def segment_dir(self, pool_id: int, name: str) -> Path:
        return self.files.segment_dir(pool_id, name)

    def adapters_dir(self, pool_id: int) -> Path:
        return self.files.adapters_dir(pool_id)

    def media_dir(self, pool_id: int) -> Path:
        return self.files.media_dir(pool_id)

    @property
    def builds_dir(self) -> Path:
        """Where builds keep their shards while they run."""
        return self.data_dir / "builds"

    # changes -------------------------------------------------------------------------------------

    def create_pool(self, *, name: str, encoder: str, embed: str, metric: str, index: str, dim: int,
                    centre: bool = False) -> PoolRecord:
        return self.catalog.create_pool(name=name, encoder=encoder, embed=embed, metric=metric, index=index, dim=dim,
                                        centre=centre)

    def delete_pool(self, name: str) -> PoolRecord:
        """Remove the pool from the catalog, then its files; returns the record it had."""
        with self._write_lock:
            pool = self.catalog.delete_pool(name)
            shutil.rmtree(self.files.pool_dir(pool.id), ignore_errors=True)
            self.changed(name)
        return pool

    def activate(self, name: str, version: int) -> PoolRecord:
        """Make ``version`` current (a rollback or roll-forward: a pointer switch)."""
        with self._write_lock:
            pool = self.catalog.pool(name)
            self.catalog.activate(pool.id, version)
            self.changed(name)
        return self.catalog.pool(name)

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

    def write(self, pool: PoolRecord, rows: Sequence[ItemRow], vectors: Any, *, bases: CurrentVersions,
              source: str, replace_all: bool, index_spec: str | None = None,
              remove_ids: frozenset[str] = frozenset(), fence: Fence | None = None) -> int:
        """Write ``rows`` as a new current version: on top of the current one (less ``remove_ids``),
        or (``replace_all``) alone. ``bases`` gives the current version read fresh from the catalog.
        Another process may make a version current meanwhile; the change is then redone on top of
        that one, so neither writer's items go missing from the current version. ``fence``: the
        job this write completes (refused once another replica took the job over)."""
        for attempt in range(WRITE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** attempt)))
            with self._write_lock:
                pool = self.catalog.pool(pool.name)
                base = None if replace_all else bases.current(pool.name, fresh=True)
                try:
                    version = write_version(
                        self.catalog, self.files, pool, base=base, new_rows=rows, new_vectors=vectors,
                        source=source, index_spec=index_spec, index_policy=self.index_policy, replace_all=replace_all,
                        remove_ids=remove_ids, fence=fence,
                    )
                except StaleBase:
                    log.info("pool %s: the current version changed during a write; writing again on top of it", pool.name)
                    continue
                self.changed(pool.name)
                self._prune(pool.id)
            for callback in self._after_write:
                try:
                    callback(pool.name)
                except Exception:  # noqa: BLE001 - upkeep must never fail the write it follows
                    log.exception("pool %s: a post-write task failed", pool.name)
            return version
        raise Conflict(f"pool {pool.name!r} kept changing while this write was made; retry it", param="pool")

    def reserve_adapter(self, pool_id: int, version: int) -> int:
        return self.catalog.reserve_adapter(pool_id, version)

    def commit_adapter(self, pool: PoolRecord, adapter_id: int, info: dict[str, Any]) -> None:
        """Record a trained adapter whose files are written; serving processes reload the pool."""
        self.catalog.commit_adapter(pool.id, adapter_id, info)
        self.changed(pool.name)

    def fail_adapter(self, adapter_id: int) -> None:
        self.catalog.fail_adapter(adapter_id)

    def on_write(self, callback: PoolCallback) -> None:
        """Call ``callback(pool name)`` after every committed write (compaction hooks in here)."""
        self._after_write.append(callback)

    def on_change(self, callback: PoolCallback) -> None:
        """Call ``callback(pool name)`` whenever this process changed what a pool serves (a write,
        an activation, an adapter, a compaction, a deletion). Runs under the write lock: keep it short."""
        self._on_change.append(callback)

    def changed(self, name: str) -> None:
        """Tell the ``on_change`` listeners that ``name`` changed (for changes committed through
        the catalog directly, such as a compaction's manifest swap)."""
        for callback in self._on_change:
            try:
                callback(name)
            except Exception:  # noqa: BLE001 - a listener must not undo a committed change
                log.exception("pool %s: a change listener failed", name)

    # retention -----------------------------------------------------------------------------------

    def collect_garbage(self, pool_id: int) -> list[str]:
        return collect_garbage(self.catalog, self.files, pool_id, self.retention)

    def _prune(self, pool_id: int) -> None:
        """Mark ready versions beyond the newest ``keep_versions`` (never the current one) pruned
        (their catalog rows stay, so the history still reads true) and remove the segments and
        deletion files that no kept version uses any more."""
        if self.keep_versions:
            self.catalog.prune_versions(pool_id, keep=self.keep_versions)
        collect_garbage(self.catalog, self.files, pool_id, self.retention)

    def _cleanup(self) -> None:
        """Fail builds whose process died and remove files no kept version uses (staging folders
        of writes that died, segments of failed or pruned versions, pools that were deleted)."""
        for pool_id, version in self.catalog.abandon_dead_builds():
            log.warning("pool %s: version %s was left half-built by a dead process; marked failed", pool_id, version)
        self.catalog.forget_dead_replicas()
        known = {p.id for p in self.catalog.pools()}
        if not self.files.root.is_dir():
            return
        for pool_dir in self.files.root.iterdir():
            if not pool_dir.name.isdigit() or int(pool_dir.name) not in known:
                shutil.rmtree(pool_dir, ignore_errors=True)
        for pool_id in known:
            collect_garbage(self.catalog, self.files, pool_id, self.retention)
