"""The snapshot cache: requests read what is cached; the refresher follows other processes."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from exemplar.errors import NotFound
from exemplar.retrieval import NewItem, PoolService, PoolStore, SnapshotCache
from exemplar.retrieval.serving import cache as cache_module
from tests.helpers import close_pools, open_pools

WAIT_S = 30.0  # generous: the machine is shared; only the bound matters, never the speed

SQLITE_ONLY = pytest.mark.parametrize("catalog_url", [None], ids=["sqlite"])


def wait_until(predicate: Callable[[], bool], *, timeout_s: float = WAIT_S, step_s: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes (bounded in rounds and in time)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / step_s) + 1):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(step_s)
    return predicate()


def items(n: int, *, start: int = 0) -> list[NewItem]:
    rng = np.random.default_rng(start)
    return [NewItem(id=f"i{start + i}", label=f"c{i % 2}", embedding=rng.normal(size=4)) for i in range(n)]


@pytest.fixture
def other(pools: PoolService, encoders) -> Iterator[PoolService]:  # noqa: ANN001
    """A second process on the same data directory: a store and cache of its own."""
    second = open_pools(pools.store.data_dir, encoders)
    yield second
    close_pools(second)


def served_version(snapshots: SnapshotCache, name: str) -> int | None:
    snap = snapshots.current(name)
    return snap.version if snap is not None else None


@SQLITE_ONLY  # a second store opens the data directory's SQLite catalog by path
def test_the_refresher_picks_up_a_version_another_process_committed(pools: PoolService, snapshots: SnapshotCache,
                                                                    other: PoolService) -> None:
    pools.create(name="p", encoder="precomputed:4")
    pools.add_items("p", items(3))
    assert snapshots.snapshot("p").version == 1
    snapshots.start()
    assert snapshots.refreshing
    other.add_items("p", items(2, start=10))
    assert wait_until(lambda: served_version(snapshots, "p") == 2), "the refresher never loaded version 2"
    assert "i10" in snapshots.snapshot("p").row_of
    other.activate("p", 1)  # a rollback elsewhere is a change like any other
    assert wait_until(lambda: served_version(snapshots, "p") == 1)


@SQLITE_ONLY  # a second store opens the data directory's SQLite catalog by path
def test_a_request_for_a_cached_pool_does_not_touch_the_catalog(pools: PoolService, store: PoolStore,
                                                                snapshots: SnapshotCache) -> None:
    pools.create(name="p", encoder="precomputed:4")
    pools.add_items("p", items(3))
    cached = snapshots.snapshot("p")
    store.catalog.close()  # any catalog query from here on raises
    assert snapshots.snapshot("p") is cached
    assert snapshots.current("p") is cached
    with pytest.raises(sqlite3.ProgrammingError):
        snapshots.current("p", fresh=True)  # the write path's read does go to the catalog


@SQLITE_ONLY  # a second store opens the data directory's SQLite catalog by path
def test_a_pool_that_is_not_cached_is_loaded_on_the_request(pools: PoolService, snapshots: SnapshotCache,
                                                            other: PoolService) -> None:
    other.create(name="late", encoder="precomputed:4")
    other.add_items("late", items(2))
    assert snapshots.snapshot("late").version == 1  # no refresher running: the request loads it


@SQLITE_ONLY  # a second store opens the data directory's SQLite catalog by path
def test_the_refresher_survives_a_load_error_and_a_deleted_pool(pools: PoolService, snapshots: SnapshotCache,
                                                                other: PoolService, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    pools.create(name="p", encoder="precomputed:4")
    pools.create(name="gone", encoder="precomputed:4")
    pools.add_items("p", items(3))
    pools.add_items("gone", items(3))
    snapshots.load_all()
    real_load = cache_module.load_snapshot
    failures: list[str] = []

    def fail_once(catalog, files, pool, version, cache):  # noqa: ANN001, ANN202
        # Only the refresher's load fails (the other "process" shares this module in the test).
        if not failures and threading.current_thread().name == "exemplar-snapshot-refresh":
            failures.append(pool.name)
            raise OSError("disk went away for a moment")
        return real_load(catalog, files, pool, version, cache)

    monkeypatch.setattr(cache_module, "load_snapshot", fail_once)
    snapshots.start()
    with caplog.at_level(logging.ERROR, logger=cache_module.__name__):
        other.add_items("p", items(1, start=20))
        other.delete("gone")
        assert wait_until(lambda: served_version(snapshots, "p") == 2), "the refresher stopped after a failed load"
        assert wait_until(lambda: not snapshots.serves("gone"))
    assert failures == ["p"] and "cannot load its changed current version" in caplog.text
    with pytest.raises(NotFound):
        snapshots.snapshot("gone")
    assert snapshots.refreshing
    snapshots.close()
    assert not snapshots.refreshing


def test_close_stops_the_refresher_and_it_can_start_again(store: PoolStore) -> None:
    cache = SnapshotCache(store, refresh_s=0.0)
    cache.start()
    cache.start()  # starting twice keeps one thread
    threads = [t for t in threading.enumerate() if t.name == "exemplar-snapshot-refresh"]
    assert len(threads) == 1 and threads[0].daemon
    thread = threads[0]
    cache.close()
    assert not thread.is_alive() and not cache.refreshing
    cache.start()
    assert cache.refreshing
    cache.close()
    assert not cache.refreshing


def test_a_load_overtaken_by_a_change_is_not_cached(pools: PoolService, snapshots: SnapshotCache,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that read the pool's record just before a write committed must not leave the
    version the write replaced cached (nothing would reload it until the next refresh round)."""
    pools.create(name="p", encoder="precomputed:4")
    pools.add_items("p", items(3))
    snapshots.invalidate("p")
    real_load = cache_module.load_snapshot
    loads: list[int] = []

    def overtaken(catalog, files, pool, version, cache):  # noqa: ANN001, ANN202
        loads.append(version)
        if len(loads) == 1:
            snapshots.invalidate("p")  # a change lands while this load runs
        return real_load(catalog, files, pool, version, cache)

    monkeypatch.setattr(cache_module, "load_snapshot", overtaken)
    assert snapshots.snapshot("p").version == 1  # the request still gets an answer
    snapshots.snapshot("p")
    assert loads == [1, 1]  # loaded again: the first load was not kept
    snapshots.snapshot("p")
    assert loads == [1, 1]  # and the second one was


@SQLITE_ONLY  # a second store opens the data directory's SQLite catalog by path
def test_the_after_swap_hook_runs_once_per_version_swapped_in(store: PoolStore, encoders, other: PoolService) -> None:  # noqa: ANN001
    swaps: list[int] = []
    snapshots = SnapshotCache(store, refresh_s=0.0, on_swap=lambda: swaps.append(1))
    pools = PoolService(store, snapshots, encoders)
    try:
        pools.create(name="p", encoder="precomputed:4")
        pools.add_items("p", items(3))
        snapshots.snapshot("p")
        first = len(swaps)
        assert first >= 1  # the first version loaded
        for _ in range(5):
            snapshots.snapshot("p")  # cached reads swap nothing
        assert len(swaps) == first
        pools.add_items("p", items(2, start=10))  # this process's write: the next read loads
        assert snapshots.snapshot("p").version == 2
        assert len(swaps) == first + 1
        other.add_items("p", items(2, start=20))  # another process's write: the refresher loads
        assert snapshots.refresh() == ["p"]
        assert snapshots.snapshot("p").version == 3 and len(swaps) == first + 2
        assert snapshots.refresh() == [] and len(swaps) == first + 2
    finally:
        snapshots.close()


def test_a_failing_after_swap_hook_does_not_fail_the_load(store: PoolStore, encoders,  # noqa: ANN001
                                                         caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise RuntimeError("hook failed")

    snapshots = SnapshotCache(store, refresh_s=0.0, on_swap=broken)
    pools = PoolService(store, snapshots, encoders)
    try:
        pools.create(name="p", encoder="precomputed:4")
        pools.add_items("p", items(3))
        with caplog.at_level(logging.ERROR):
            assert snapshots.snapshot("p").version == 1
        assert "after-swap hook failed" in caplog.text
    finally:
        snapshots.close()
