"""The adapter space indexed like the encoder space: ``invariant`` on an indexed pool searches a
per-segment IVF (partitioned by class) over the mapped adapter vectors; exact pools, small segments
and adapters trained before these indexes are scanned exactly over the mapped vectors."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from exemplar.app.adapters import CCITrainer
from exemplar.retrieval import AdapterService, JobService, NewItem, PoolService, Query, SelectionOptions, SelectionService
from exemplar.retrieval.index.auto import AutoIndexPolicy
from exemplar.retrieval.index.partitioned import PartitionedClasses
from exemplar.retrieval.index.vectors import VectorIndex
from exemplar.retrieval.serving.composite import ExactIndex, SegmentedClasses, SegmentedIndex
from exemplar.retrieval.store.compaction import CompactionPolicy
from exemplar.retrieval.store.maintenance import CompactionService
from tests.helpers import close_pools, clustered_vectors, open_pools, oracle_balanced, oracle_topk

# Small pools get an index here: the pool asks for IVF over 4-bit codes, and a later segment of 300
# rows or more gets one of its own. The recall target is the production one.
POLICY = AutoIndexPolicy(sample_queries=100, segment_index_rows=300)
DIM = 32
N = 3_000
BASES = ("topk", "balanced")


@pytest.fixture
def data() -> tuple[np.ndarray, list[str], list[str]]:
    """Clustered vectors (5 classes, 3 domains): the pool's rows first, then held-out queries."""
    return clustered_vectors(n=N + 1_000, dim=DIM, n_labels=5, n_domains=3, seed=21)


@pytest.fixture
def indexed(tmp_path: Path, encoders) -> Iterator[PoolService]:  # noqa: ANN001
    pools = open_pools(tmp_path / "data", encoders, index_policy=POLICY)
    yield pools
    close_pools(pools)


def make_pool(pools: PoolService, name: str, V: np.ndarray, labels: list[str], domains: list[str], rows: range,
              index: str = "auto") -> None:
    pools.create(name=name, encoder=f"precomputed:{DIM}", index=index)
    add(pools, name, V, labels, domains, rows)


def add(pools: PoolService, name: str, V: np.ndarray, labels: list[str], domains: list[str], rows: range) -> None:
    pools.add_items(name, [NewItem(id=f"i{i:05d}", label=labels[i], domain=domains[i], embedding=V[i]) for i in rows])


def train(pools: PoolService, name: str) -> dict:
    jobs = JobService(pools.store.catalog)
    try:
        service = AdapterService(pools.store, pools.snapshots, jobs, CCITrainer("cpu"))
        job = jobs.wait(service.start(name, {"epochs": 3, "seed": 1}).id)
    finally:
        jobs.close()
    assert job.state == "succeeded", job.errors
    return job.result


def adapter_folder(pools: PoolService, name: str, segment: str, adapter_id: int) -> Path:
    return pools.store.files.segment_dir(pools.get(name).id, segment) / "adapters" / str(adapter_id)


def windows(pools: PoolService, name: str, queries: np.ndarray, base: str) -> tuple[list[list[str]], list[list[str]]]:
    """``invariant``'s window of 10 per query, and the same window from exact search in the adapter space."""
    selection = SelectionService(pools.store, pools.snapshots, pools.encoders)
    snap = pools.snapshots.snapshot(name)
    adapted = np.asarray(snap.adapter.vectors)
    ids = list(snap.ids)
    labels = [snap.label_of(r) for r in range(snap.size)]
    got, want = [], []
    for q in queries:
        q = q / np.linalg.norm(q)
        a = snap.adapter.adapter.apply(q[None, :])[0]
        result = selection.select(name, Query(embedding=q.tolist()), "invariant", SelectionOptions(k=10, invariant_base=base))
        got.append([d.id for d in sorted(result.demonstrations, key=lambda d: d.rank)])
        rows = oracle_topk(adapted, a, k=10) if base == "topk" else oracle_balanced(adapted, labels, a, k=10)
        want.append([ids[r] for r in rows])
    return got, want


def recall(got: list[list[str]], want: list[list[str]]) -> float:
    return sum(len(set(g) & set(w)) for g, w in zip(got, want)) / sum(len(w) for w in want)


def test_training_indexes_the_adapter_space_of_an_indexed_pool(indexed: PoolService, data) -> None:  # noqa: ANN001
    V, labels, domains = data
    make_pool(indexed, "p", V, labels, domains, range(N), index="IVF32,SQ4")
    result = train(indexed, "p")
    adapter_id = result["adapter_id"]
    folder = adapter_folder(indexed, "p", "s1", adapter_id)
    assert (folder / "index" / "index.faiss").is_file() and (folder / "index" / "classes").is_dir()
    assert [i["segment"] for i in result["index"]["indexed"]] == ["s1"] and result["index"]["seconds"] >= 0
    snap = indexed.snapshots.snapshot("p")
    view = snap.adapter
    assert isinstance(view.index, VectorIndex) and not view.index.exact and view.index.reranks
    assert isinstance(view.classes, PartitionedClasses)
    # Re-scored from the mapped adapter vectors: no copy of them is held in memory.
    assert isinstance(view.vectors, np.memmap) and view.index.vectors is view.vectors
    assert view.classes.vectors is view.vectors
    assert indexed.stats("p").adapter is not None
    queries = V[N : N + 200]
    for base in BASES:
        got, want = windows(indexed, "p", queries, base)
        assert recall(got, want) >= 0.95, base
        if base == "balanced":  # exact quotas whatever the index misses: 2 of each of the 5 classes
            assert all(len(g) == 10 for g in got)


def test_an_exact_pool_stays_exact_in_the_adapter_space(indexed: PoolService, data) -> None:  # noqa: ANN001
    V, labels, domains = data
    make_pool(indexed, "small", V, labels, domains, range(600))  # auto: 600 x 32 floats is scanned exactly
    adapter_id = train(indexed, "small")["adapter_id"]
    assert not (adapter_folder(indexed, "small", "s1", adapter_id) / "index").exists()
    view = indexed.snapshots.snapshot("small").adapter
    assert isinstance(view.index, ExactIndex) and isinstance(view.classes, SegmentedClasses)
    for base in BASES:
        got, want = windows(indexed, "small", V[N : N + 30], base)
        assert (got == want) if base == "topk" else ([sorted(g) for g in got] == [sorted(w) for w in want])


def test_an_adapter_from_before_the_index_is_served_exactly(indexed: PoolService, data, encoders, tmp_path: Path
                                                            ) -> None:  # noqa: ANN001
    V, labels, domains = data
    make_pool(indexed, "p", V, labels, domains, range(N), index="IVF32,SQ4")
    adapter_id = train(indexed, "p")["adapter_id"]
    shutil.rmtree(adapter_folder(indexed, "p", "s1", adapter_id) / "index")  # as an adapter trained before
    reopened = open_pools(tmp_path / "data", encoders, index_policy=POLICY)
    try:
        view = reopened.snapshots.snapshot("p").adapter
        # The mapped adapter vectors scanned exactly, class by class too: no in-memory copy.
        assert isinstance(view.index, ExactIndex) and isinstance(view.index.vectors, np.memmap)
        assert isinstance(view.classes, SegmentedClasses) and view.classes.class_indexes == [None]
        assert isinstance(view.classes.vectors[0], np.memmap)
        for base in BASES:
            got, want = windows(reopened, "p", V[N : N + 30], base)
            assert (got == want) if base == "topk" else ([sorted(g) for g in got] == [sorted(w) for w in want])
    finally:
        close_pools(reopened)


def test_writes_and_compaction_index_their_rows_in_the_adapter_space(indexed: PoolService, data) -> None:  # noqa: ANN001
    V, labels, domains = data
    make_pool(indexed, "p", V, labels, domains, range(2_000), index="IVF32,SQ4")
    adapter_id = train(indexed, "p")["adapter_id"]
    add(indexed, "p", V, labels, domains, range(2_000, 2_400))  # 400 rows: a segment with an index
    for start in range(2_400, 3_000, 150):  # 4 writes of 150: scanned exactly
        add(indexed, "p", V, labels, domains, range(start, start + 150))
    record = indexed.get("p")
    names = [s["name"] for s in indexed.store.catalog.version(record.id, record.current_version).manifest["segments"]]
    assert len(names) == 6
    has_index = [(adapter_folder(indexed, "p", n, adapter_id) / "index" / "index.faiss").is_file() for n in names]
    assert has_index == [True, True, False, False, False, False]
    view = indexed.snapshots.snapshot("p").adapter
    assert isinstance(view.index, SegmentedIndex) and isinstance(view.classes, SegmentedClasses)
    assert [type(i).__name__ for i in view.index.indexes] == ["VectorIndex"] * 2 + ["ExactIndex"] * 4
    for base in BASES:
        got, want = windows(indexed, "p", V[N : N + 100], base)
        assert recall(got, want) >= 0.95, base

    jobs = JobService(indexed.store.catalog)
    try:
        service = CompactionService(indexed.store, jobs, CompactionPolicy(merge_factor=4),
                                    segments=indexed.snapshots.segments, automatic=False)
        job = jobs.wait(service.start("p").id)
    finally:
        jobs.close()
    assert job.state == "succeeded", job.errors
    merged = [s["name"] for s in indexed.store.catalog.version(record.id, record.current_version).manifest["segments"]]
    # What follows the largest segment is merged into one (1,000 rows), indexed in both spaces.
    assert merged[0] == "s1" and len(merged) == 2 and merged[1] not in names
    assert (adapter_folder(indexed, "p", merged[1], adapter_id) / "index" / "index.faiss").is_file()
    view = indexed.snapshots.snapshot("p").adapter
    assert [type(i).__name__ for i in view.index.indexes] == ["VectorIndex"] * 2
    assert all(c is not None for c in view.classes.class_indexes)
    for base in BASES:
        got, want = windows(indexed, "p", V[N : N + 100], base)
        assert recall(got, want) >= 0.95, base
