"""The store object: what a write is derived from, who hears about changes, the named reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exemplar.retrieval import NewItem, PoolService, PoolStore, SnapshotCache
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.store.items import item_row


class RecordingBases:
    """The ``CurrentVersions`` port over a real cache, recording what the store asked for."""

    def __init__(self, snapshots: SnapshotCache) -> None:
        self.snapshots = snapshots
        self.asked: list[tuple[str, bool]] = []

    def current(self, name: str, *, fresh: bool = False) -> Snapshot | None:
        self.asked.append((name, fresh))
        return self.snapshots.current(name, fresh=fresh)


def rows_and_vectors(ids: list[str], dim: int = 4, seed: int = 0) -> tuple[list, np.ndarray]:
    items = [NewItem(id=i, label="x", embedding=np.ones(dim)) for i in ids]
    vectors = np.random.default_rng(seed).normal(size=(len(ids), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [item_row(item) for item in items], vectors


def test_an_upsert_is_derived_from_the_fresh_current_version_and_a_replacement_from_nothing(
        pools: PoolService, store: PoolStore, snapshots: SnapshotCache) -> None:
    pools.create(name="p", encoder="precomputed:4")
    bases = RecordingBases(snapshots)
    rows, vectors = rows_and_vectors(["a", "b"])
    assert store.write(store.pool("p"), rows, vectors, bases=bases, source="test", replace_all=False) == 1
    rows, vectors = rows_and_vectors(["c"], seed=1)
    assert store.write(store.pool("p"), rows, vectors, bases=bases, source="test", replace_all=False) == 2
    assert bases.asked == [("p", True), ("p", True)]
    assert sorted(snapshots.snapshot("p").ids) == ["a", "b", "c"]
    rows, vectors = rows_and_vectors(["z"], seed=2)
    assert store.write(store.pool("p"), rows, vectors, bases=bases, source="test", replace_all=True) == 3
    assert len(bases.asked) == 2  # a full replacement has no base
    assert snapshots.snapshot("p").ids == ("z",)


def test_listeners_hear_every_change_this_process_commits(pools: PoolService, store: PoolStore) -> None:
    heard: list[str] = []
    written: list[str] = []
    store.on_change(heard.append)
    store.on_write(written.append)
    pools.create(name="p", encoder="precomputed:4")
    pools.add_items("p", [NewItem(id="a", label="x", embedding=[1, 0, 0, 0])])
    pools.add_items("p", [NewItem(id="b", label="y", embedding=[0, 1, 0, 0])])
    pools.activate("p", 1)
    pools.delete_items("p", ["a"])
    pools.delete("p")
    assert heard == ["p"] * 5  # two writes, an activation, a deletion of items, the pool's deletion
    assert written == ["p"] * 3  # only committed writes start upkeep


def test_a_failing_listener_or_hook_does_not_fail_the_write(pools: PoolService, store: PoolStore,
                                                           snapshots: SnapshotCache) -> None:
    def broken(name: str) -> None:
        raise RuntimeError(f"listener for {name} broke")

    store.on_change(broken)
    store.on_write(broken)
    pools.create(name="p", encoder="precomputed:4")
    assert pools.add_items("p", [NewItem(id="a", label="x", embedding=[1, 0, 0, 0])]) == 1
    assert snapshots.snapshot("p").version == 1


def test_named_reads(pools: PoolService, store: PoolStore, tmp_path: Path) -> None:
    pools.create(name="p", encoder="precomputed:4")
    pools.add_items("p", [NewItem(id="a", label="x", embedding=[1, 0, 0, 0])])
    pools.add_items("p", [NewItem(id="b", label="y", embedding=[0, 1, 0, 0])])
    pool = store.pool("p")
    assert [p.name for p in store.pools()] == ["p"]
    assert [v.version for v in store.versions(pool.id)] == [1, 2]
    assert store.version(pool.id, 2).size == 2
    assert [s.name for s in store.manifest(pool.id, 2).segments] == ["s1", "s2"]
    assert store.segment_dir(pool.id, "s2").is_dir()
    assert store.adapter(pool.id, 2) is None and store.adapted_versions(pool.id) == []
    assert store.inherited_adapters(pool.id) == set()
    assert store.builds_dir == tmp_path / "data" / "builds"
    assert store.media_dir(pool.id).parent == store.pool_dir(pool.id)


def test_deleting_a_pool_removes_its_files_and_what_this_process_served(pools: PoolService, store: PoolStore,
                                                                        snapshots: SnapshotCache) -> None:
    pools.create(name="p", encoder="precomputed:4")
    pools.add_items("p", [NewItem(id="a", label="x", embedding=[1, 0, 0, 0])])
    pool_dir = store.pool_dir(store.pool("p").id)
    snapshots.snapshot("p")
    assert snapshots.serves("p") and pool_dir.is_dir()
    pools.delete("p")
    assert not snapshots.serves("p") and not pool_dir.exists()
