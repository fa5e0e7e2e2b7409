"""SelectionService reads the picked items of a request together: the same demonstrations as by row."""

from __future__ import annotations

import numpy as np

from exemplar.retrieval import NewItem, PoolService, Query, SelectionService, SnapshotCache
from exemplar.retrieval.serving.selection import _demonstration, _ItemReader
from exemplar.retrieval.serving.strategies import Pick, SelectionOptions


def _items(n: int, start: int) -> list[NewItem]:
    rng = np.random.default_rng(start)
    return [NewItem(id=f"i{start + i}", label=f"c{i % 3}", text=f"t{start + i}" if i % 2 else None,
                    domain="d" if i % 4 else None, metadata={"n": start + i} if i % 3 else {},
                    embedding=rng.normal(size=4)) for i in range(n)]


def test_items_read_together_are_the_items_read_by_row(pools: PoolService, snapshots: SnapshotCache,
                                                       encoders) -> None:  # noqa: ANN001
    pools.create(name="p", encoder="precomputed:4")
    for start in (0, 100, 200):  # three segments, and rows deleted from two of them
        pools.add_items("p", _items(20, start))
    pools.delete_items("p", ["i3", "i4", "i105", "i119"])
    snap = snapshots.snapshot("p")
    assert snap.space is not None and len(snap.space.parts) >= 2
    rows = list(range(snap.size))
    reader = _ItemReader(snap, rows[::-1] + rows[:5])  # any order, repeats
    assert reader.values  # read together, not row by row
    for row in rows:
        pick = Pick(row=row, score=0.5, rank=row)
        assert reader.demonstration(pick) == _demonstration(snap, pick)
    # a row outside the ones read is still read, by row
    assert _ItemReader(snap, [0, 1]).demonstration(Pick(row=7, score=None, rank=0)) == _demonstration(
        snap, Pick(row=7, score=None, rank=0))

    service = SelectionService(pools.store, snapshots, encoders)
    queries = [Query(embedding=v) for v in np.random.default_rng(9).normal(size=(5, 4))]
    results = service.select_batch("p", queries, "topk", SelectionOptions(k=6))
    for result in results:
        for d in result.demonstrations:
            assert d == _demonstration(snap, Pick(row=snap.row_of.get(d.id), score=d.score, rank=d.rank))


def test_a_batch_of_vectors_is_checked_and_scaled_as_each_alone(pools: PoolService, snapshots: SnapshotCache,
                                                                encoders) -> None:  # noqa: ANN001
    from exemplar.errors import Incompatible, InvalidRequest, NotFound

    pools.create(name="p", encoder="precomputed:4")
    pools.add_items("p", _items(30, 0))
    service = SelectionService(pools.store, snapshots, encoders)
    rng = np.random.default_rng(3)
    vectors = [rng.normal(size=4) * scale for scale in (1e-30, 1.0, 1e30)] + [rng.normal(size=4).astype(np.float32)]
    batch = service.prepare("p", [Query(embedding=v) for v in vectors], "topk", SelectionOptions(k=3))
    for row, v in zip(batch.vectors, vectors):
        alone = service.prepare("p", [Query(embedding=v)], "topk", SelectionOptions(k=3))
        assert row.tobytes() == alone.vectors[0].tobytes()
    # the first bad query of a batch is the one reported, whatever else is wrong after it
    cases = [
        ([Query(embedding=[1, 0, 0, 0]), Query(embedding=[0, 0, 0, 0]), Query(embedding=[1, 2])],
         InvalidRequest, "queries[1].embedding"),
        ([Query(embedding=[1, 0, 0, 0]), Query(embedding=[1, 2]), Query(embedding=[np.nan, 0, 0, 0])],
         Incompatible, "queries[1].embedding"),
        ([Query(embedding=[1, 0, 0, 0]), Query(item_id="nope"), Query(embedding=[np.inf, 0, 0, 0])],
         NotFound, "queries[1].item_id"),
        ([Query(embedding=[1, 0, 0, 0]), Query(embedding=[np.inf, 0, 0, 0]), Query(item_id="nope")],
         InvalidRequest, "queries[1].embedding"),
    ]
    for queries, error, param in cases:
        try:
            service.prepare("p", queries, "topk", SelectionOptions(k=3))
        except error as exc:
            assert exc.param == param
        else:
            raise AssertionError(f"{queries} passed")
