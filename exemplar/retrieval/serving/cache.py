"""What this process serves: one snapshot per pool, kept fresh off the request path.

A request reads the cached snapshot and nothing else. Changes made through this process's store
drop the cached snapshot at once (the next request loads the new version); changes made by other
processes are found by a background refresher that reads every pool's revision in one catalog
query each ``refresh_s`` (at once when a PostgreSQL catalog notifies a change) and loads the pools
that changed. The segments it has loaded go out with the store's heartbeat, so that retention on a
shared catalog never removes a file this process serves.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from exemplar.errors import EmptyPool, NotFound
from exemplar.retrieval.serving.loading import SegmentCache, load_snapshot
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.store.catalog import PoolRecord
from exemplar.retrieval.store.store import PoolStore

__all__ = ["MIN_REFRESH_S", "SnapshotCache"]

log = logging.getLogger(__name__)

MIN_REFRESH_S = 0.05
"""The refresher's shortest pause: ``refresh_s = 0`` (tests) must not turn it into a busy loop on the catalog."""

STOP_WAIT_S = 30.0
"""How long ``close`` waits for a round in progress (a large version loading) to finish."""


@dataclasses.dataclass(frozen=True)
class _Served:
    snapshot: Snapshot
    pool_id: int  # a pool deleted and created again under the same name is another pool


class SnapshotCache:
    """The snapshots this process serves, and the ``SegmentCache`` they share (a new version loads
    only the segments it adds). Listens to ``store``'s changes; call ``start`` to follow other
    processes' changes too (the server does; a command that reads once does not need to)."""

    def __init__(self, store: PoolStore, *, refresh_s: float = 1.0,
                 on_swap: Callable[[], object] | None = None) -> None:
        self.store = store
        self.refresh_s = refresh_s
        # Called after a newly loaded version replaced the one served (the server hands the
        # memory freed with the old snapshot back to the OS there).
        self._on_swap = on_swap
        self.segments = SegmentCache()
        self._served: dict[str, _Served] = {}
        # Bumped by every invalidation, so that a load that began before one does not cache what
        # it read (it may be the version the invalidation replaced).
        self._invalidations = 0
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        store.on_change(self.invalidate)
        store.report_serving(self.segments.names)

    # the request path ----------------------------------------------------------------------------

    def snapshot(self, name: str, *, allow_empty: bool = False) -> Snapshot:
        """The current version of ``name`` as served (loaded now if this process serves it not yet)."""
        snap = self.current(name)
        if snap is None:
            raise EmptyPool(f"pool {name!r} has no items yet: add items or build it first", param="pool")
        if snap.size == 0 and not allow_empty:
            raise EmptyPool(f"pool {name!r} is empty", param="pool")
        return snap

    def current(self, name: str, *, fresh: bool = False) -> Snapshot | None:
        """The served snapshot of ``name``; None when the pool has no version yet. ``fresh`` reads
        the pool's record from the catalog first (what a write must be derived from)."""
        if not fresh:
            served = self._served.get(name)
            if served is not None:
                return served.snapshot
        with self._load_lock:
            epoch = self._invalidations
            before = self._served.get(name)
            snap = self._load(self.store.pool(name), epoch)
            loaded = before is None or before.snapshot is not snap
            before = None
        if loaded:
            self._swapped()
        return snap

    def serves(self, name: str) -> bool:
        """Whether a snapshot of ``name`` is cached (a request for it reads no catalog)."""
        return name in self._served

    # changes -------------------------------------------------------------------------------------

    def invalidate(self, name: str) -> None:
        """Drop the served snapshot of ``name``: the next request loads the current version."""
        self._invalidations += 1
        self._served.pop(name, None)

    def forget(self, name: str, pool_id: int) -> None:
        """Drop a deleted pool and the segments it kept loaded."""
        self._served.pop(name, None)
        self.segments.forget_pool(pool_id)

    def load_all(self) -> None:
        """Load every pool's current version (start-up), so the first requests pay nothing."""
        for pool in self.store.pools():
            if pool.current_version is not None:
                try:
                    self.snapshot(pool.name, allow_empty=True)
                except Exception:  # noqa: BLE001 - one broken pool must not keep the others down
                    log.exception("pool %s: cannot load version %s", pool.name, pool.current_version)

    def refresh(self) -> list[str]:
        """One round of the refresher: read every pool's revision in one catalog query and reload
        the served pools whose revision moved (another process wrote, activated, compacted, trained
        an adapter or deleted the pool). Returns the names found changed. A pool that fails to load
        keeps its old snapshot (its files stay readable while mapped) until a later round."""
        if not self._served:
            return []
        records = {pool.name: pool for pool in self.store.pools()}
        changed = []
        for name, served in list(self._served.items()):
            record = records.get(name)
            if record is not None and record.id == served.pool_id and record.revision == served.snapshot.revision:
                continue
            changed.append(name)
            try:
                with self._load_lock:
                    if self._served.get(name) is not served:
                        continue  # a request or this process's own write got there first
                    epoch = self._invalidations
                    try:
                        pool = self.store.pool(name)  # the record read above may be older than what is served
                    except NotFound:
                        self.forget(name, served.pool_id)
                        continue
                    self._load(pool, epoch)
            except Exception:  # noqa: BLE001 - a broken pool must not stop the others from refreshing
                log.exception("pool %s: cannot load its changed current version; still serving version %s",
                              name, served.snapshot.version)
        served = None  # noqa: F841 - the last replaced snapshot must not stay alive through the hook
        if changed:
            self._swapped()
        return changed

    # the refresher thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background refresher (one daemon thread; ``close`` stops it)."""
        if self._refresher is not None and self._refresher.is_alive():
            return
        self._stop.clear()
        self._refresher = threading.Thread(target=self._refresh_until_stopped, name="exemplar-snapshot-refresh",
                                           daemon=True)
        self._refresher.start()

    @property
    def refreshing(self) -> bool:
        return self._refresher is not None and self._refresher.is_alive()

    def close(self) -> None:
        """Stop the refresher (waiting a bounded time for a round in progress)."""
        self._stop.set()
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.join(STOP_WAIT_S)
            if refresher.is_alive():
                log.warning("the snapshot refresher is still loading after %.0f s; leaving it (a daemon thread)",
                            STOP_WAIT_S)

    def _refresh_until_stopped(self) -> None:
        pause = max(self.refresh_s, MIN_REFRESH_S)
        while not self._stop.is_set():
            self.store.wait_for_change(pause, self._stop)
            if self._stop.is_set():
                break
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - e.g. the catalog busy or closing: try again next round
                log.exception("refreshing the served pools failed; trying again in %.2f s", pause)

    # loading -------------------------------------------------------------------------------------

    def _load(self, pool: PoolRecord, epoch: int) -> Snapshot | None:
        """Serve ``pool``'s current version (the caller holds the load lock and read ``epoch``
        before ``pool``): the cached snapshot when it is still that version at that revision, else
        the version loaded now, cached unless an invalidation came in meanwhile."""
        served = self._served.get(pool.name)
        if pool.current_version is None:
            self._served.pop(pool.name, None)
            return None
        if served is not None and served.pool_id == pool.id and served.snapshot.revision == pool.revision:
            return served.snapshot
        try:
            snap = load_snapshot(self.store.catalog, self.store.files, pool, pool.current_version, self.segments)
        except FileNotFoundError:
            # Read the manifest just before a compaction swapped it and retention removed the
            # segments it listed: the catalog now lists their replacement.
            pool = self.store.pool(pool.name)
            if pool.current_version is None:
                self._served.pop(pool.name, None)
                return None
            snap = load_snapshot(self.store.catalog, self.store.files, pool, pool.current_version, self.segments)
        if served is not None and served.pool_id != pool.id:
            self.segments.forget_pool(served.pool_id)
        if snap.manifest is not None:
            self.segments.keep_only(pool.id, (s.name for s in snap.manifest.segments))
        if self._invalidations == epoch:
            self._served[pool.name] = _Served(snap, pool.id)
        return snap

    def _swapped(self) -> None:
        """Run the after-swap hook (its caller holds no reference to the snapshot replaced)."""
        if self._on_swap is None:
            return
        try:
            self._on_swap()
        except Exception:  # noqa: BLE001 - upkeep must not fail the load it follows
            log.exception("the after-swap hook failed")
