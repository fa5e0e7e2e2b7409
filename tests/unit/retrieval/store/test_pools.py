"""Pool store: versions, rollback, durability and the all-or-nothing rule for writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exemplar.errors import Conflict, EmptyPool, InvalidImage, InvalidRequest, NotFound, UnsupportedQuery
from exemplar.retrieval import NewItem, PoolService, Query, SelectionOptions, SelectionService
from tests.helpers import close_pools, open_pools, png_bytes

SQLITE_ONLY = pytest.mark.parametrize("catalog_url", [None], ids=["sqlite"])


def vec_items(n: int, dim: int = 8, start: int = 0, seed: int = 0, label: str = "a") -> list[NewItem]:
    rng = np.random.default_rng(seed)
    return [NewItem(id=f"i{start + i}", label=label, embedding=rng.normal(size=dim)) for i in range(n)]


def test_create_list_stats_delete(pools: PoolService) -> None:
    pools.create(name="p1", encoder="precomputed:8")
    pools.create(name="p2", encoder="open_clip:exemplar-tiny", embed="image+text")
    assert [p.name for p in pools.list()] == ["p1", "p2"]
    assert pools.get("p2").dim == 64
    with pytest.raises(Conflict):
        pools.create(name="p1", encoder="precomputed:8")
    pools.add_items("p1", vec_items(5) + [NewItem(id="x", label="b", domain="d1", embedding=np.ones(8))])
    stats = pools.stats("p1")
    assert stats.size == 6 and stats.labels == {"a": 5, "b": 1} and stats.domains == {"(none)": 5, "d1": 1}
    assert [v.version for v in stats.versions] == [1] and stats.versions[0].state == "ready"
    folder = pools.store.files.pool_dir(pools.get("p1").id)
    assert folder.is_dir()
    pools.delete("p1")
    assert not folder.exists()
    with pytest.raises(NotFound):
        pools.stats("p1")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"name": "../etc", "encoder": "precomputed:8"}, "name"),
        ({"name": "", "encoder": "precomputed:8"}, "name"),
        ({"name": "ok", "encoder": "nope:1"}, "encoder"),
        ({"name": "ok", "encoder": "precomputed:0"}, "encoder"),
        ({"name": "ok", "encoder": "open_clip:NoSuchArch@random"}, "encoder"),
        ({"name": "ok", "encoder": "open_clip:ViT-B-32@no-such-tag"}, "encoder"),
        ({"name": "ok", "encoder": "precomputed:8", "embed": "audio"}, "embed"),
        ({"name": "ok", "encoder": "precomputed:8", "metric": "l1"}, "metric"),
        ({"name": "ok", "encoder": "precomputed:8", "index": "NotAnIndex"}, "index"),
    ],
)
def test_create_refuses_bad_specs_and_changes_nothing(pools: PoolService, kwargs: dict, param: str) -> None:
    # a malformed spec is invalid; an architecture or tag this server does not have is not found
    with pytest.raises((InvalidRequest, NotFound)) as info:
        pools.create(**kwargs)
    assert info.value.param == param
    assert pools.list() == []


def test_each_write_is_a_new_version_and_replaces_by_id(pools: PoolService) -> None:
    pools.create(name="p", encoder="precomputed:8")
    v1 = pools.add_items("p", vec_items(3))
    v2 = pools.add_items("p", [NewItem(id="i1", label="changed", embedding=np.ones(8))] + vec_items(2, start=10))
    assert (v1, v2) == (1, 2)
    snap = pools.snapshots.snapshot("p")
    assert sorted(snap.ids) == ["i0", "i1", "i10", "i11", "i2"]
    assert snap.label_of(snap.row_of["i1"]) == "changed"
    np.testing.assert_allclose(snap.vectors[snap.row_of["i1"]], np.ones(8) / np.sqrt(8), rtol=1e-6)


def test_rollback_then_write_builds_on_the_active_version(pools: PoolService) -> None:
    pools.create(name="p", encoder="precomputed:8")
    pools.add_items("p", vec_items(2))  # v1: i0 i1
    pools.add_items("p", vec_items(2, start=5))  # v2: + i5 i6
    pools.activate("p", 1)
    assert sorted(pools.snapshots.snapshot("p").ids) == ["i0", "i1"]
    pools.add_items("p", vec_items(1, start=9))  # v3 from v1: i0 i1 i9
    assert sorted(pools.snapshots.snapshot("p").ids) == ["i0", "i1", "i9"]
    pools.activate("p", 2)
    assert sorted(pools.snapshots.snapshot("p").ids) == ["i0", "i1", "i5", "i6"]
    with pytest.raises(NotFound):
        pools.activate("p", 42)


def test_bad_item_rejects_the_whole_batch(pools: PoolService) -> None:
    pools.create(name="p", encoder="precomputed:8")
    pools.add_items("p", vec_items(2))
    bad = [
        [NewItem(id="ok", embedding=np.ones(8)), NewItem(id="nan", embedding=np.full(8, np.nan))],
        [NewItem(id="short", embedding=np.ones(3))],
        [NewItem(id="none")],
        [NewItem(id="dup", embedding=np.ones(8)), NewItem(id="dup", embedding=np.ones(8))],
        [NewItem(id="", embedding=np.ones(8))],
    ]
    for items in bad:
        with pytest.raises(InvalidRequest):
            pools.add_items("p", items)
    assert pools.stats("p").size == 2 and [v.version for v in pools.stats("p").versions] == [1]


def test_image_pool_rejects_bad_images_and_stores_good_ones(pools: PoolService) -> None:
    pools.create(name="img", encoder="open_clip:exemplar-tiny")
    with pytest.raises(InvalidImage) as info:
        pools.add_items("img", [NewItem(id="a", image_bytes=png_bytes()), NewItem(id="b", image_bytes=b"not an image")])
    assert info.value.param == "items[1].image"
    with pytest.raises(InvalidRequest, match="need an 'image'"):
        pools.add_items("img", [NewItem(id="a", text="no image")])
    with pytest.raises(InvalidRequest, match="only for precomputed"):
        pools.add_items("img", [NewItem(id="a", image_bytes=png_bytes(), embedding=np.ones(64))])
    assert pools.get("img").current_version is None
    pools.add_items("img", [NewItem(id="a", label="red", image_bytes=png_bytes())])
    snap = pools.snapshots.snapshot("img")
    stored = pools.store.files.media_dir(pools.get("img").id) / snap.images[0]
    assert stored.read_bytes() == png_bytes()
    assert snap.images[0].endswith(".png")


def test_precomputed_pool_refuses_encoded_queries(pools: PoolService, vector_pool) -> None:
    selection = SelectionService(pools.store, pools.snapshots, pools.encoders)
    with pytest.raises(UnsupportedQuery, match="precomputed"):
        selection.select("vec", Query(text="hello"), "topk", SelectionOptions())


def test_empty_pool_is_refused(pools: PoolService) -> None:
    pools.create(name="empty", encoder="precomputed:8")
    with pytest.raises(EmptyPool):
        SelectionService(pools.store, pools.snapshots, pools.encoders).select("empty", Query(embedding=[1.0] * 8), "topk", SelectionOptions())


# A second process opens the data directory's own SQLite catalog by path; replicas over
# PostgreSQL are tested in tests/unit/retrieval/store/test_postgres_catalog.py.
@SQLITE_ONLY
def test_version_files_are_complete_and_reloadable(pools: PoolService, encoders, tmp_path: Path) -> None:
    pools.create(name="p", encoder="precomputed:8")
    pools.add_items("p", vec_items(20))
    folder = pools.store.files.segment_dir(pools.get("p").id, "s1")
    # 20 vectors are scanned exactly: the segment has no index of its own
    assert sorted(p.name for p in folder.iterdir()) == ["ids.npy", "items.arrow", "segment.json", "uids.npy", "vectors.npy"]
    assert not list(folder.parent.glob(".staging-*"))
    assert pools.store.catalog.version(pools.get("p").id, 1).manifest == {
        "segments": [{"name": "s1", "deletes": None, "deleted": 0, "rows": 20}], "adapter": None}
    reopened = open_pools(pools.store.data_dir, encoders)
    try:
        a, b = pools.snapshots.snapshot("p"), reopened.snapshots.snapshot("p")
        assert a.ids == b.ids
        np.testing.assert_array_equal(np.asarray(a.vectors), np.asarray(b.vectors))
    finally:
        close_pools(reopened)


def test_failed_write_leaves_the_serving_version_intact(pools: PoolService, monkeypatch: pytest.MonkeyPatch) -> None:
    pools.create(name="p", encoder="precomputed:8")
    pools.add_items("p", vec_items(3))
    from exemplar.retrieval.store import files

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(files, "publish_dir", explode)  # segments publish through files.staged_dir
    with pytest.raises(OSError):
        pools.add_items("p", vec_items(3, start=100))
    monkeypatch.undo()
    assert pools.get("p").current_version == 1
    assert sorted(pools.snapshots.snapshot("p").ids) == ["i0", "i1", "i2"]
    states = {v.version: v.state for v in pools.stats("p").versions}
    assert states == {1: "ready", 2: "failed"}
    segments_dir = pools.store.files.segments_dir(pools.get("p").id)
    assert sorted(p.name for p in segments_dir.iterdir()) == ["s1"]
    assert pools.add_items("p", vec_items(1, start=7)) == 3


_KILLED_WRITER = """
import os, sys, numpy as np
from pathlib import Path
from exemplar.encoders import EncoderRegistry
from exemplar.retrieval import NewItem
from exemplar.retrieval.store import catalog
from tests.helpers import open_pools
pools = open_pools(Path(sys.argv[1]), EncoderRegistry())
def die(self, *a, **k):
    os._exit(9)  # the process dies after the files are written, before the catalog commits
catalog.Catalog.commit_version = die
pools.add_items("p", [NewItem(id="late", embedding=np.ones(8))])
"""


# A second process opens the data directory's own SQLite catalog by path; replicas over
# PostgreSQL are tested in tests/unit/retrieval/store/test_postgres_catalog.py.
@SQLITE_ONLY
def test_process_killed_mid_write_is_cleaned_up_on_open(pools: PoolService, encoders) -> None:
    pools.create(name="p", encoder="precomputed:8")
    pools.add_items("p", vec_items(3))
    close_pools(pools)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(pools.store.data_dir)], env=env, timeout=120)
    assert proc.returncode == 9
    pool_id = 1
    assert (pools.store.data_dir / "pools" / str(pool_id) / "segments" / "s2").exists(), "files written before the kill"
    reopened = open_pools(pools.store.data_dir, encoders)
    try:
        assert reopened.get("p").current_version == 1
        assert sorted(reopened.snapshots.snapshot("p").ids) == ["i0", "i1", "i2"]
        assert {v.version: v.state for v in reopened.stats("p").versions} == {1: "ready", 2: "failed"}
        assert not (pools.store.data_dir / "pools" / str(pool_id) / "segments" / "s2").exists()
    finally:
        close_pools(reopened)


# A second process opens the data directory's own SQLite catalog by path; replicas over
# PostgreSQL are tested in tests/unit/retrieval/store/test_postgres_catalog.py.
@SQLITE_ONLY
def test_versions_written_elsewhere_are_picked_up_without_a_restart(pools: PoolService, encoders) -> None:
    pools.create(name="p", encoder="precomputed:8")
    pools.add_items("p", vec_items(2))
    reader = open_pools(pools.store.data_dir, encoders)
    try:
        assert reader.snapshots.snapshot("p").version == 1
        pools.add_items("p", vec_items(1, start=50))
        # One round of what the server's refresher thread does every refresh_s (tests/unit/
        # retrieval/serving/test_cache.py runs the thread itself).
        assert reader.snapshots.refresh() == ["p"]
        assert reader.snapshots.snapshot("p").version == 2 and "i50" in reader.snapshots.snapshot("p").row_of
        pools.activate("p", 1)
        assert reader.snapshots.refresh() == ["p"] and reader.snapshots.snapshot("p").version == 1
        assert reader.snapshots.refresh() == []  # nothing changed since
        pools.delete("p")
        assert reader.snapshots.refresh() == ["p"]
        with pytest.raises(NotFound):
            reader.snapshots.snapshot("p")
    finally:
        close_pools(reader)


# A second process opens the data directory's own SQLite catalog by path; replicas over
# PostgreSQL are tested in tests/unit/retrieval/store/test_postgres_catalog.py.
@SQLITE_ONLY
def test_a_write_racing_another_process_is_redone_on_top_of_it(pools: PoolService, monkeypatch) -> None:
    """Two PoolServices on one data directory stand for two processes: the second commits while
    the first is between reading its base and committing; neither's items go missing."""
    from exemplar.retrieval.store import versions as versions_module

    pools.create(name="race", encoder="precomputed:4")
    pools.add_items("race", vec_items(4, dim=4))
    other = open_pools(pools.store.data_dir, pools.encoders)
    real_write_segment = versions_module.write_segment
    raced: list[int] = []
    started: list[bool] = []

    def write_segment_with_a_rival(*args, **kwargs):  # noqa: ANN002, ANN003
        if not started:  # only the first write gets a rival (the rival's own write passes through here)
            started.append(True)
            raced.append(other.add_items("race", [NewItem(id="rival", label="x", embedding=[0, 0, 1, 1])]))
        return real_write_segment(*args, **kwargs)

    monkeypatch.setattr(versions_module, "write_segment", write_segment_with_a_rival)
    try:
        version = pools.add_items("race", [NewItem(id="mine", label="y", embedding=[1, 1, 0, 0])])
    finally:
        close_pools(other)
    snap = pools.snapshots.snapshot("race")
    assert raced == [3] and version == 4 and snap.version == 4  # 2 was the first try, 3 the rival
    assert {"rival", "mine"} <= set(snap.ids) and snap.size == 6
    states = {v.version: v.state for v in pools.store.catalog.versions(pools.get("race").id)}
    assert states == {1: "ready", 2: "failed", 3: "ready", 4: "ready"}


def test_old_versions_are_pruned_beyond_keep_versions(tmp_path, encoders) -> None:  # noqa: ANN001
    from exemplar.errors import Conflict

    pools = open_pools(tmp_path / "data", encoders, keep_versions=2)
    try:
        pools.create(name="p", encoder="precomputed:4")
        for i in range(5):  # each write replaces the same three items
            pools.add_items("p", vec_items(3, dim=4, start=0, seed=i))
        pool = pools.get("p")
        states = {v.version: v.state for v in pools.store.catalog.versions(pool.id)}
        assert states == {1: "pruned", 2: "pruned", 3: "ready", 4: "ready", 5: "ready"}
        # A segment goes when no kept version lists it: each version here is its own one segment.
        on_disk = sorted(p.name for p in pools.store.files.segments_dir(pool.id).iterdir())
        assert on_disk == ["s3", "s4", "s5"]
        assert not list(pools.store.files.deletes_dir(pool.id).glob("s1-*")) and not list(pools.store.files.deletes_dir(pool.id).glob("s2-*"))
        with pytest.raises(Conflict, match="pruned"):
            pools.activate("p", 1)
        pools.activate("p", 3)  # a rollback within the kept history; the current version is never pruned
        pools.add_items("p", vec_items(1, dim=4, start=100))
        states = {v.version: v.state for v in pools.store.catalog.versions(pool.id)}
        # 6 (on top of 3) is current; of the others only the newest two are kept
        assert pools.get("p").current_version == 6 and pools.snapshots.snapshot("p").size == 4
        assert [states[v] for v in (3, 4, 5, 6)] == ["pruned", "ready", "ready", "ready"]
    finally:
        close_pools(pools)
