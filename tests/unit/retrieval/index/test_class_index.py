"""Per-class indexes (balanced): exact ones match the oracle, approximate ones reach their recall
target, and both survive a save and reload keyed by label name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exemplar.retrieval import NewItem, PoolService, SelectionOptions, SelectionService
from exemplar.retrieval.index.auto import AutoIndexPolicy
from exemplar.retrieval.index.classes import ClassIndexes
from exemplar.retrieval.index.partitioned import PartitionedClasses
from exemplar.retrieval.serving.snapshot import label_codes_of
from tests.helpers import close_pools, clustered_vectors, open_pools, oracle_balanced

POLICY = AutoIndexPolicy(class_exact_max_bytes=1_000 * 32 * 4, class_train_points=4_000, target_recall=0.9, sample_queries=100)


def test_exact_class_indexes_return_each_classes_nearest_rows() -> None:
    V, labels, _ = clustered_vectors(n=2_000, dim=16, n_labels=7, n_domains=2, seed=3)
    codes, names = label_codes_of(labels)
    classes = ClassIndexes.build(V, codes, len(names), approximate=False)
    assert not classes.approximate
    q = V[:5]
    for c in range(len(names)):
        D, I = classes.search(c, q, 4)
        for row, found in enumerate(I):
            members = np.flatnonzero(codes == c)
            expected = members[np.argsort(-(V[members] @ q[row]), kind="stable")[:4]]
            assert sorted(found.tolist()) == sorted(expected.tolist())
            assert np.all(codes[found] == c)


def test_filtered_class_search_keeps_to_the_allowed_rows() -> None:
    V, labels, _ = clustered_vectors(n=1_500, dim=8, n_labels=3, n_domains=2, seed=4)
    codes, names = label_codes_of(labels)
    classes = ClassIndexes.build(V, codes, len(names), approximate=False)
    allowed_local = np.zeros(len(classes.rows[1]), bool)
    allowed_local[::5] = True
    _, I = classes.search(1, V[:3], 6, allowed_local)
    assert set(I.ravel().tolist()) <= set(classes.rows[1][allowed_local].tolist())


def test_approximate_class_indexes_reach_the_recall_target_and_reload(tmp_path: Path) -> None:
    V, labels, _ = clustered_vectors(n=12_000, dim=32, n_labels=4, n_domains=3, seed=5)
    codes, names = label_codes_of(labels)
    classes = ClassIndexes.build(V, codes, len(names), approximate=True, policy=POLICY)
    assert len(classes.approximate) == len(names)
    assert classes.stats["recall_at_k"] >= 0.9 and classes.stats["nprobe"] >= 1
    classes.save(tmp_path / "classes", names)
    # Reloaded under a different code order (as a snapshot with other labels' codes would be).
    reordered = tuple(reversed(names))
    loaded = ClassIndexes.load(tmp_path / "classes", V, reordered)
    assert loaded is not None
    for new_code, name in enumerate(reordered):
        old_code = names.index(name)
        assert np.array_equal(loaded.rows[new_code], classes.rows[old_code])
        assert loaded.indexes[new_code].params == classes.indexes[old_code].params
        D, I = loaded.search(new_code, V[:20], 5)
        assert np.all(codes[I[I >= 0]] == old_code)
    assert ClassIndexes.load(tmp_path / "classes", V, ("other",)) is None
    assert ClassIndexes.load(tmp_path / "missing", V, names) is None


@pytest.mark.parametrize("index", ["Flat", "IVF32,Flat", "IVF32,SQ4"])
def test_balanced_on_a_pool_matches_the_oracle(tmp_path: Path, encoders, index: str) -> None:  # noqa: ANN001
    V, labels, _ = clustered_vectors(n=3_000, dim=16, n_labels=5, n_domains=2, seed=6)
    policy = AutoIndexPolicy(class_exact_max_bytes=500 * 16 * 4, class_train_points=2_000, target_recall=0.9, sample_queries=100)
    pools = open_pools(tmp_path / "data", encoders, index_policy=policy)
    try:
        pools.create(name="p", encoder="precomputed:16", index=index)
        pools.add_items("p", [NewItem(id=f"i{i}", label=labels[i], embedding=V[i]) for i in range(len(V))])
        snap = pools.snapshots.snapshot("p")
        assert snap.classes is not None and bool(snap.classes.approximate) == (index != "Flat")
        # codes (SQ4) are partitioned by class: one index serves topk and balanced
        assert isinstance(snap.classes, PartitionedClasses) == index.endswith("SQ4")
        selection = SelectionService(pools.store, pools.snapshots, pools.encoders)
        from exemplar.retrieval import Query

        overlap = total = 0
        for row in range(0, 3_000, 150):
            result = selection.select("p", Query(embedding=V[row].tolist()), "balanced", SelectionOptions(k_per_class=3))
            got = [snap.row_of[d.id] for d in sorted(result.demonstrations, key=lambda d: d.rank)]
            want = oracle_balanced(V, labels, V[row], k_per_class=3)
            assert sorted({labels[r] for r in got}) == sorted(set(labels))  # exact quotas either way
            if index == "Flat":
                assert got == want
            overlap += len(set(got) & set(want))
            total += len(want)
        assert overlap / total >= 0.9
        # A window of fewer items than classes (one slot for each of the 2 classes nearest the query):
        # the other classes are scanned less deeply, and the window still matches the definition.
        overlap = total = 0
        for row in range(75, 3_000, 150):
            result = selection.select("p", Query(embedding=V[row].tolist()), "balanced", SelectionOptions(k=2))
            got = [snap.row_of[d.id] for d in sorted(result.demonstrations, key=lambda d: d.rank)]
            want = oracle_balanced(V, labels, V[row], k=2)
            assert len({labels[r] for r in got}) == 2
            if index == "Flat":
                assert got == want
            overlap += len(set(got) & set(want))
            total += len(want)
        assert overlap / total >= 0.9
    finally:
        close_pools(pools)


@pytest.mark.parametrize("codes", ["SQ4", "Flat"])
def test_approximate_class_indexes_answer_an_exact_effort_exactly(codes: str) -> None:
    from exemplar.retrieval import Effort

    V, labels, _ = clustered_vectors(n=6_000, dim=32, n_labels=3, n_domains=2, seed=14)
    label_codes, names = label_codes_of(labels)
    policy = AutoIndexPolicy(class_exact_max_bytes=1_000 * 32 * 4, class_train_points=4_000, class_codes=codes,
                             target_recall=0.9, sample_queries=50)
    classes = ClassIndexes.build(V, label_codes, len(names), approximate=True, policy=policy)
    assert classes.approximate == [0, 1, 2]  # each class over its own inverted lists, vectors gathered by row
    q = V[[5, 2_000, 4_000]] + 0.01
    found = classes.search_many([0, 1, 2], q, 5, effort=Effort(exact=True))
    for c in range(3):
        members = classes.rows[c]
        for row in range(len(q)):
            want = members[np.argsort(-(V[members] @ q[row]), kind="stable")[:5]]
            assert found[c][1][row].tolist() == want.tolist()
