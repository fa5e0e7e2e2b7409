"""Segments and compaction: many small writes stay exact, compaction bounds the segment count,
purges deletions, carries over writes made while it ran, and migrates version folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from exemplar.encoders import EncoderRegistry
from exemplar.retrieval import JobService, NewItem, PoolService, Query, SelectionOptions, SelectionService
from exemplar.retrieval.store.maintenance import CompactionService
from exemplar.retrieval.store.compaction import CompactionPolicy, plan
from exemplar.retrieval.store.manifest import Manifest, SegmentEntry
from tests.helpers import close_pools, clustered_vectors, open_pools, oracle_balanced, oracle_topk

LEGACY = Path(__file__).parents[3] / "fixtures" / "legacy-v1"

SQLITE_ONLY = pytest.mark.parametrize("catalog_url", [None], ids=["sqlite"])


def entries(*rows: int, deleted: dict[int, int] | None = None) -> Manifest:
    deleted = deleted or {}
    return Manifest(tuple(SegmentEntry(f"s{i}", rows=n, deleted=deleted.get(i, 0)) for i, n in enumerate(rows)))


@pytest.mark.parametrize("rows,deleted,want", [
    ((1000, 5, 5, 5), {}, None),  # three small ones: below the merge factor
    ((1000, 5, 5, 5, 5), {}, (1, 5)),  # four of the lowest tier at the tail
    ((1000, 50, 5, 5, 5), {}, None),  # a bigger tier stops the run: three is still too few
    ((1000, 50, 5, 5, 5, 5), {}, (2, 6)),
    ((1000, 5, 5, 5, 50), {}, (1, 5)),  # the run takes what sits at or below the tier of its last
    ((100, 100, 100, 100), {}, (0, 4)),
    ((1000, 5, 5), {0: 300}, (0, 1)),  # 30 % deleted: rewritten alone
    ((1000, 5, 5), {0: 100}, None),  # 10 %: left alone
])
def test_the_tiered_plan(rows, deleted, want) -> None:
    assert plan(entries(*rows, deleted=deleted), CompactionPolicy(merge_factor=4)) == want


@pytest.mark.parametrize("rows,deleted,want", [
    ((1000, 5, 5), {}, (1, 3)),  # what follows the largest, however few
    ((5, 1000, 5), {2: 1}, (2, 3)),  # one segment, but with deleted rows to purge
    ((1000, 5), {}, None),  # already the large one plus at most one
])
def test_an_explicit_compaction_merges_what_follows_the_largest(rows, deleted, want) -> None:
    assert plan(entries(*rows, deleted=deleted), CompactionPolicy(merge_factor=4), force=True) == want


def test_plan_rewrites_version_folders_from_before_segments() -> None:
    manifest = Manifest((SegmentEntry("v2", rows=30), SegmentEntry("s3", rows=1)))
    assert plan(manifest, CompactionPolicy()) == (0, 1)
    assert plan(manifest, CompactionPolicy(rewrite_legacy=False)) is None


@pytest.fixture
def service(pools: PoolService):
    jobs = JobService(pools.store.catalog)
    yield CompactionService(pools.store, jobs, CompactionPolicy(merge_factor=4), segments=pools.snapshots.segments,
                            automatic=False)
    jobs.close()


def segment_names(pools: PoolService, name: str) -> list[str]:
    record = pools.get(name)
    return [s["name"] for s in pools.store.catalog.version(record.id, record.current_version).manifest["segments"]]


def test_many_small_writes_then_compaction_stay_exact(pools: PoolService, service: CompactionService) -> None:
    V, labels, _ = clustered_vectors(n=400, dim=16, n_labels=4, n_domains=2, seed=11)
    pools.create(name="p", encoder="precomputed:16")
    for start in range(0, 400, 20):  # 20 writes of 20 items: 20 segments
        pools.add_items("p", [NewItem(id=f"i{n:03d}", label=labels[n], embedding=V[n]) for n in range(start, start + 20)])
    pools.delete_items("p", [f"i{n:03d}" for n in range(0, 400, 7)])
    selection = SelectionService(pools.store, pools.snapshots, pools.encoders)

    def check_exact() -> None:
        snap = pools.snapshots.snapshot("p")
        stored = np.asarray(snap.vectors)
        ids = [snap.ids[r] for r in range(snap.size)]
        keep = [labels[int(i[1:])] for i in ids]
        for q in (3, 150, 399):
            query = V[q] + 0.05
            got = selection.select("p", Query(embedding=query.tolist()), "topk", SelectionOptions(k=10))
            norm = query / np.linalg.norm(query)
            assert [d.id for d in got.demonstrations] == [ids[r] for r in oracle_topk(stored, norm, k=10)]
            got = selection.select("p", Query(embedding=query.tolist()), "balanced", SelectionOptions(k_per_class=2))
            want = oracle_balanced(stored, keep, norm, k_per_class=2)
            assert sorted(d.id for d in got.demonstrations) == sorted(ids[r] for r in want)

    assert len(segment_names(pools, "p")) == 20 and pools.snapshots.snapshot("p").size == 400 - 58
    check_exact()
    job = service.jobs.wait(service.start("p").id)
    assert job.state == "succeeded", job.errors
    names = segment_names(pools, "p")
    assert len(names) < 8 and all(n.startswith("m") for n in names[:1])
    assert pools.snapshots.snapshot("p").size == 400 - 58
    check_exact()
    # Merged away: the small segments' files go once no kept version lists them.
    assert pools.get("p").current_version == 21  # compaction made no version of its own


def test_compaction_keeps_every_item_field(pools: PoolService, service: CompactionService) -> None:
    V, labels, domains = clustered_vectors(n=60, dim=8, n_labels=3, n_domains=3, seed=5)
    pools.create(name="p", encoder="precomputed:8")
    for start in range(0, 60, 15):
        pools.add_items("p", [NewItem(id=f"i{n:03d}", label=labels[n], domain=domains[n], text=f"text {n}",
                                      metadata={"n": n}, embedding=V[n]) for n in range(start, start + 15)])

    def fields() -> dict[str, tuple]:
        snap = pools.snapshots.snapshot("p")
        return {snap.ids[r]: (snap.label_of(r), snap.domain_of(r), snap.texts[r], snap.images[r],
                              snap.metadata_of(r)) for r in range(snap.size)}

    before = fields()
    assert before["i007"] == (labels[7], domains[7], "text 7", None, {"n": 7})
    result = service.compact_once("p")
    assert len(result["merged"]) == 4
    assert fields() == before
    snap = pools.snapshots.snapshot("p")
    assert sorted(snap.domains) == sorted(set(domains))


def test_compaction_carries_over_a_write_made_while_it_ran(pools: PoolService, service: CompactionService) -> None:
    V, labels, _ = clustered_vectors(n=100, dim=8, n_labels=2, n_domains=1, seed=2)
    pools.create(name="p", encoder="precomputed:8")
    for start in range(0, 100, 20):
        pools.add_items("p", [NewItem(id=f"i{n:03d}", label=labels[n], embedding=V[n]) for n in range(start, start + 20)])
    raced: list[int] = []

    def meanwhile() -> None:  # runs between the merge being written and it being committed
        if not raced:
            raced.append(pools.delete_items("p", ["i005", "i050"]).version)
            raced.append(pools.add_items("p", [NewItem(id="late", label=labels[0], embedding=V[0] + 1)]))

    result = service.compact_once("p", _Checker(meanwhile))  # type: ignore[arg-type]
    assert raced == [6, 7] and result["version"] == 7 and len(result["merged"]) == 5
    snap = pools.snapshots.snapshot("p")
    assert snap.version == 7 and snap.size == 99
    assert "i005" not in snap.row_of and "i050" not in snap.row_of and "late" in snap.row_of
    assert segment_names(pools, "p")[0] == result["into"] and segment_names(pools, "p")[1] == "s7"


class _Checker:
    """A job context whose ``check`` runs a callback (the hook compaction calls between steps)."""

    def __init__(self, callback) -> None:  # noqa: ANN001
        self.check = callback


def test_compaction_purges_deleted_rows(pools: PoolService, service: CompactionService) -> None:
    V, labels, _ = clustered_vectors(n=50, dim=8, n_labels=2, n_domains=1, seed=3)
    pools.create(name="p", encoder="precomputed:8")
    pools.add_items("p", [NewItem(id=f"i{n:03d}", label=labels[n], embedding=V[n]) for n in range(50)])
    pools.delete_items("p", [f"i{n:03d}" for n in range(20)])
    assert service.needed("p")
    result = service.compact_once("p")
    assert result["rows"] == 30 and result["purged"] == 20
    record = pools.store.catalog.version(pools.get("p").id, 2)
    assert record.manifest["segments"] == [{"name": result["into"], "deletes": None, "deleted": 0, "rows": 30}]
    assert not service.needed("p")


def test_writes_start_compaction_by_themselves(pools: PoolService) -> None:
    jobs = JobService(pools.store.catalog)
    try:
        CompactionService(pools.store, jobs, CompactionPolicy(merge_factor=3))
        pools.create(name="p", encoder="precomputed:4")
        for n in range(6):
            pools.add_items("p", [NewItem(id=f"i{n}", embedding=np.eye(4)[n % 4] + n)])
        for job in jobs.list(pool="p"):
            assert jobs.wait(job.id).state == "succeeded"
        assert jobs.list(pool="p", kinds=("compact",))
        assert len(segment_names(pools, "p")) < 6 and pools.snapshots.snapshot("p").size == 6
    finally:
        jobs.close()


def test_compaction_migrates_a_version_folder_into_a_segment(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(LEGACY, data)
    pools = open_pools(data, EncoderRegistry())
    jobs = JobService(pools.store.catalog)
    try:
        before = SelectionService(pools.store, pools.snapshots, pools.encoders).select("legacy", Query(item_id="old04"), "invariant",
                                                SelectionOptions(k=5, invariant_base="topk"))
        result = CompactionService(pools.store, jobs, automatic=False).compact_once("legacy")
        assert result["merged"] == ["v2"] and result["version"] == 2
        folder = pools.store.files.segment_dir(pools.get("legacy").id, result["into"])
        assert (folder / "items.arrow").is_file() and (folder / "adapters" / "1" / "vectors.npy").is_file()
        after = SelectionService(pools.store, pools.snapshots, pools.encoders).select("legacy", Query(item_id="old04"), "invariant",
                                               SelectionOptions(k=5, invariant_base="topk"))
        assert [d.id for d in after.demonstrations] == [d.id for d in before.demonstrations]
        assert pools.item("legacy", "old09").metadata == {"n": 9}
        # Version 1 still lists its folder (kept for rollback); version 2's is gone with nothing listing it.
        assert pools.store.files.version_dir(pools.get("legacy").id, 1).is_dir()
        assert not pools.store.files.version_dir(pools.get("legacy").id, 2).exists()
    finally:
        jobs.close()
        close_pools(pools)


_KILLED_COMPACTION = """
import os, sys
from pathlib import Path
from exemplar.retrieval import JobService, PoolStore
from exemplar.retrieval.store.catalog import Catalog
from exemplar.retrieval.store.maintenance import CompactionService
from exemplar.retrieval.store import compaction, segments
from exemplar.retrieval.store.compaction import CompactionPolicy

where = sys.argv[2]
def die(*a, **k):
    os._exit(9)
if where == "commit":  # the merged segment is written, the manifest not yet swapped
    Catalog.replace_manifest = die
else:  # half of the merged segment is on disk
    compaction.write_segment = lambda folder, *a, **k: (folder.with_name(".staging-" + folder.name).mkdir(parents=True), die())
store = PoolStore(Path(sys.argv[1]))
CompactionService(store, JobService(store.catalog), CompactionPolicy(merge_factor=2), automatic=False).compact_once("p")
"""


@pytest.mark.parametrize("where", ["segment", "commit"])
def test_a_compaction_killed_midway_leaves_the_version_intact(tmp_path: Path, where: str) -> None:
    import os
    import subprocess
    import sys

    data = tmp_path / "data"
    pools = open_pools(data, EncoderRegistry())
    pools.create(name="p", encoder="precomputed:4")
    for n in range(4):
        pools.add_items("p", [NewItem(id=f"i{n}", embedding=np.eye(4)[n] + 0.1)])
    pools.delete_items("p", ["i1"])
    before = [pools.snapshots.snapshot("p").ids[r] for r in range(pools.snapshots.snapshot("p").size)]
    close_pools(pools)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.run([sys.executable, "-c", _KILLED_COMPACTION, str(data), where], env=env, timeout=120)
    assert proc.returncode == 9
    reopened = open_pools(data, EncoderRegistry())
    jobs = JobService(reopened.store.catalog)
    try:
        snap = reopened.snapshots.snapshot("p")
        assert [snap.ids[r] for r in range(snap.size)] == before and snap.version == 5
        assert segment_names(reopened, "p") == ["s1", "s3", "s4"]  # s2 lost its one row to the deletion
        # The work is resumable: the next compaction does it, and the leftovers are not listed anywhere.
        result = CompactionService(reopened.store, jobs, CompactionPolicy(merge_factor=2), automatic=False).compact_once("p")
        assert len(result["merged"]) == 3
        snap = reopened.snapshots.snapshot("p")
        assert [snap.ids[r] for r in range(snap.size)] == before
    finally:
        jobs.close()
        close_pools(reopened)


@pytest.mark.parametrize("spec,rows,build,want", [
    ("auto", 1000, True, None),  # a small pool is scanned exactly
    ("auto", 300_000, True, "IVF2048,SQ4"),
    ("HNSW16", 2000, True, "HNSW16"),  # a build uses the pool's own factory
    ("HNSW16", 100, False, None),  # an addition of a few items is scanned
    ("IVF1024,Flat", 5000, False, "IVF128,SQ4"),  # a merge too small for the pool's factory gets its own
    ("Flat", 5000, False, None),  # an exact pool stays exact
    ("Flat", 100_000, False, "Flat"),
])
def test_what_index_a_segment_gets(spec: str, rows: int, build: bool, want: str | None) -> None:
    from exemplar.retrieval.index.auto import AutoIndexPolicy
    from exemplar.retrieval.store.segments import segment_factory

    assert segment_factory(spec, rows, 512, AutoIndexPolicy(), build_requested=build) == want


# A second process opens the data directory's own SQLite catalog by path; replicas over
# PostgreSQL are tested in tests/unit/retrieval/store/test_postgres_catalog.py.
@SQLITE_ONLY
def test_a_killed_compactions_staging_folder_is_collected(pools: PoolService) -> None:
    pools.create(name="p", encoder="precomputed:4")
    pools.add_items("p", [NewItem(id="a", label="x", embedding=np.ones(4, np.float32))])
    record = pools.get("p")
    staging = pools.store.files.segments_dir(record.id) / ".staging-m0123456789ab"
    staging.mkdir()
    os.utime(staging, (time.time() - 60, time.time() - 60))  # not a compaction starting this very second
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(gone.stdout)  # a process that has exited

    def job(pid: int) -> None:
        with pools.store.catalog.transaction() as conn:
            conn.execute("DELETE FROM jobs")
            conn.execute("INSERT INTO jobs (id, kind, pool, state, pid, created_at) VALUES ('j', 'compact', 'p', "
                         "'running', ?, ?)", (pid, time.time()))

    job(os.getpid())  # a compaction of this process, still running: its staging folder stays
    assert ".staging-m0123456789ab" not in pools.store.collect_garbage(record.id) and staging.exists()
    job(dead_pid)  # its process was killed: the folder is a leftover
    assert ".staging-m0123456789ab" in pools.store.collect_garbage(record.id) and not staging.exists()
