"""The class-partitioned IVF: lists pure in one class, one copy of the codes for topk and
balanced, results checked against exact search on seeded clustered data."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from exemplar.retrieval.index.auto import AutoIndexPolicy
from exemplar.retrieval.index.partitioned import PartitionedClasses, build_partitioned, partitionable
from exemplar.retrieval.index.vectors import Effort
from exemplar.retrieval.serving.snapshot import label_codes_of
from exemplar.retrieval.store.catalog import ItemRow
from exemplar.retrieval.store.segments import load_segment, write_segment
from tests.helpers import clustered_vectors

POLICY = AutoIndexPolicy(target_recall=0.9, sample_queries=100)


def _lists(index: faiss.Index) -> list[np.ndarray]:
    ivf = faiss.extract_index_ivf(index)
    return [faiss.rev_swig_ptr(ivf.invlists.get_ids(i), ivf.invlists.list_size(i)).copy() for i in range(ivf.nlist)]


def _exact(V: np.ndarray, members: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    return members[np.argsort(-(V[members] @ q), kind="stable")[:k]].tolist()


@pytest.fixture(scope="module")
def built() -> tuple[np.ndarray, np.ndarray, list[str], object, PartitionedClasses, dict]:
    V, labels, _ = clustered_vectors(n=8_000, dim=32, n_labels=5, n_domains=3, seed=11)
    codes, names = label_codes_of(labels)
    codes = codes.copy()
    codes[::17] = -1  # some unlabelled rows: in the index for topk, in no class
    index, classes, stats = build_partitioned(V, codes, len(names), "IVF64,SQ4", POLICY)
    return V, codes, list(names), index, classes, stats


def test_only_ivf_over_codes_is_partitioned() -> None:
    assert partitionable("IVF4096,SQ4") and partitionable("IVF64,SQ8") and partitionable("IVF16,SQfp16")
    assert not partitionable("IVF64,Flat") and not partitionable("HNSW32") and not partitionable("Flat")
    assert not partitionable("IVF64,PQ8")


def test_every_row_sits_in_one_list_of_its_own_class(built) -> None:  # noqa: ANN001
    V, codes, names, index, classes, _ = built
    lists = _lists(index.index)
    assert index.ntotal == len(V)
    everything = np.concatenate(lists)
    assert np.array_equal(np.sort(everything), np.arange(len(V)))
    for c, (first, last) in enumerate(classes.spans):
        assert last > first
        members = np.concatenate([lists[i] for i in range(first, last)])
        assert np.array_equal(np.sort(members), classes.rows[c])
        assert np.all(codes[members] == c)
    # the lists after the classes' hold the unlabelled rows
    tail = np.concatenate(lists[int(classes.spans[-1, 1]):])
    assert np.array_equal(np.sort(tail), np.flatnonzero(codes < 0))


def test_class_search_probing_every_list_is_exact(built) -> None:  # noqa: ANN001
    V, codes, names, index, classes, _ = built
    saved = classes.nprobe
    classes.nprobe = 10_000  # every list of the class; the re-rank makes the scores exact
    try:
        q = V[[3, 500, 4_000]]
        for c in range(len(names)):
            D, I = classes.search(c, q, 6)
            for row in range(len(q)):
                want = _exact(V, classes.rows[c], q[row], 6)
                # the 4-bit codes only rank candidates (RERANK x k of them); the best ones survive
                assert I[row].tolist()[:1] == want[:1]
                assert len(set(I[row].tolist()) & set(want)) >= 5
                assert np.allclose(D[row], V[I[row]] @ q[row], atol=1e-5)
    finally:
        classes.nprobe = saved


def test_tuning_reaches_the_recall_targets(built) -> None:  # noqa: ANN001
    V, codes, names, index, classes, stats = built
    assert stats["recall_at_k"] >= POLICY.target_recall  # topk through the same lists
    assert classes.stats["recall_at_k"] >= POLICY.target_recall and classes.stats["kind"] == "partitioned"
    assert classes.nprobe == classes.stats["nprobe"] >= 1
    # measured again here, on queries near (not equal to) pool items
    rng = np.random.default_rng(2)
    queries = V[rng.choice(len(V), 40, replace=False)] + rng.normal(scale=0.02, size=(40, V.shape[1])).astype(np.float32)
    hits = total = 0
    for c in range(len(names)):
        _, I = classes.search(c, queries, 5)
        for row, q in enumerate(queries):
            want = _exact(V, classes.rows[c], q, 5)
            hits += len(set(I[row].tolist()) & set(want))
            total += len(want)
    assert hits / total >= 0.9


def test_filters_keep_to_the_allowed_rows_on_both_paths(built) -> None:  # noqa: ANN001
    V, codes, names, index, classes, _ = built
    members = classes.rows[2]
    q = V[:4]
    sparse = np.zeros(len(members), bool)
    sparse[::7] = True  # a small subset: scanned exactly
    dense = np.ones(len(members), bool)
    dense[::9] = False  # most of the class: probed through a selector
    for allowed in (sparse, dense):
        D, I = classes.search(2, q, 8, allowed)
        assert set(I.ravel().tolist()) <= set(members[allowed].tolist())
        assert np.all((I >= 0).sum(axis=1) == 8)
    nothing = np.zeros(len(members), bool)
    _, I = classes.search(2, q, 3, nothing)
    assert np.all(I == -1)


def test_a_segment_keeps_one_set_of_codes_and_reloads_under_other_label_codes(tmp_path: Path) -> None:
    V, labels, _ = clustered_vectors(n=6_000, dim=16, n_labels=4, n_domains=2, seed=12)
    rows = [ItemRow(uid=i, item_id=f"i{i}", label=labels[i], text=None, image=None, media_root=None, domain=None,
                    metadata=None) for i in range(len(V))]
    stats = write_segment(tmp_path / "s1", rows, V, index_spec="IVF32,SQ4", policy=POLICY, build_requested=True)
    assert stats["index"]["classes"]["kind"] == "partitioned"
    assert not list((tmp_path / "s1" / "classes").glob("*.faiss"))  # no per-class copies of the codes
    segment = load_segment("s1", tmp_path / "s1")
    assert isinstance(segment.classes, PartitionedClasses)
    names = sorted(set(labels))
    q = V[:10]
    for code, name in enumerate(names):
        D, I = segment.classes.search(code, q, 4)
        assert {labels[i] for i in I.ravel() if i >= 0} == {name}
    # A snapshot keying the labels in another order gets the same classes under its codes.
    reordered = tuple(reversed(names))
    again = PartitionedClasses.load(tmp_path / "s1" / "classes",
                                    json.loads((tmp_path / "s1" / "classes" / "classes.json").read_text()),
                                    segment.index, segment.vectors, reordered)
    for new_code, name in enumerate(reordered):
        old_code = names.index(name)
        assert np.array_equal(again.rows[new_code], segment.classes.rows[old_code])
        assert np.array_equal(again.search(new_code, q, 4)[1], segment.classes.search(old_code, q, 4)[1])


def test_many_classes_in_one_call_answer_as_each_class_alone(built) -> None:  # noqa: ANN001
    V, codes, names, index, classes, _ = built
    rng = np.random.default_rng(4)
    q = V[rng.choice(len(V), 7, replace=False)]
    masks = {1: np.arange(len(classes.rows[1])) % 4 != 0,  # most of a class: through the bitmap
             3: np.arange(len(classes.rows[3])) % 11 == 0}  # a few rows: scanned exactly
    together = classes.search_many([4, 1, 3, 0, 2], q, 5, masks)
    assert sorted(together) == [0, 1, 2, 3, 4]
    for code in range(len(names)):
        D, I = classes.search(code, q, 5, masks.get(code))
        assert np.array_equal(together[code][1], I)
        assert np.allclose(together[code][0], D)
        allowed_rows = classes.rows[code] if code not in masks else classes.rows[code][masks[code]]
        assert set(I.ravel().tolist()) <= set(allowed_rows.tolist())


def test_a_window_of_few_classes_scans_the_other_classes_shallowly(monkeypatch: pytest.MonkeyPatch) -> None:
    V, labels, _ = clustered_vectors(n=6_000, dim=32, n_labels=12, n_domains=2, seed=12)
    codes, names = label_codes_of(labels)
    _, classes, _ = build_partitioned(V, codes, len(names), "IVF96,SQ4", POLICY)
    rng = np.random.default_rng(6)
    q = V[rng.choice(len(V), 30, replace=False)] + rng.normal(scale=0.05, size=(30, V.shape[1])).astype(np.float32)
    everyone = list(range(len(names)))
    scans: list[tuple[int, int]] = []  # (rows, lists) of each faiss call
    original = PartitionedClasses._scan

    def spy(self, q, Iq, Dq, wide, k, params):  # noqa: ANN001, ANN202
        scans.append(Iq.shape)
        return original(self, q, Iq, Dq, wide, k, params)

    classes.nprobe = 8
    full = classes.search_many(everyone, q, 3)
    monkeypatch.setattr(PartitionedClasses, "_scan", spy)
    window = classes.search_many(everyone, q, 3, needed=2)
    # two passes: every (query, class) pair over 2 of its 8 lists, then 2 + 4 classes per query over the other 6
    assert scans == [(30 * 12, 2), (30 * 6, 6)]
    monkeypatch.undo()
    classes.nprobe = 2  # the first pass alone
    shallow = classes.search_many(everyone, q, 3)
    same_window = 0
    for row in range(len(q)):
        for c in everyone:
            D, I = window[c][0][row], window[c][1][row]
            assert np.allclose(D, V[I] @ q[row], atol=1e-5)  # exact scores, whichever pass found them
            if not np.array_equal(I, shallow[c][1][row]):  # deepened: both passes' candidates, never worse
                assert np.all(D >= full[c][0][row] - 1e-6)
        best = sorted(everyone, key=lambda c: -full[c][0][row][0])[:2]
        same_window += sorted(best) == sorted(sorted(everyone, key=lambda c: -window[c][0][row][0])[:2])
    assert same_window >= 0.9 * len(q)  # the window's classes, as probing every class fully finds them


def test_class_searches_take_an_effort(built) -> None:  # noqa: ANN001
    from exemplar.retrieval import Effort

    V, codes, names, index, classes, _ = built
    rng = np.random.default_rng(7)
    q = V[rng.choice(len(V), 12, replace=False)] + rng.normal(scale=0.05, size=(12, V.shape[1])).astype(np.float32)
    everyone = list(range(len(names)))
    exact = classes.search_many(everyone, q, 4, effort=Effort(exact=True))
    wide = classes.search_many(everyone, q, 4, effort=Effort(nprobe=10_000))
    for c in everyone:
        for row in range(len(q)):
            want = _exact(V, classes.rows[c], q[row], 4)
            assert exact[c][1][row].tolist() == want
            assert wide[c][1][row].tolist()[:1] == want[:1]  # every list probed; the re-rank keeps the best
    saved = classes.nprobe
    shallow = classes.search_many(everyone, q, 4, effort=Effort(scale=1e-3))  # rounds down to one list
    one = classes.search_many(everyone, q, 4, effort=Effort(nprobe=1))
    assert all(np.array_equal(shallow[c][1], one[c][1]) for c in everyone)
    assert classes.nprobe == saved  # the tuned setting is left as it was



def test_asking_a_class_for_one_more_item_does_not_change_its_best() -> None:
    # Tuning asks each class for k + 1 items (its queries are pool items, left out of their own
    # answers), serving asks new queries for k: both must re-score the same candidates, or the
    # recall tuned is not the recall served. Diffuse classes, where 4-bit codes blur the best item.
    rng = np.random.default_rng(8)
    V = rng.normal(size=(6_000, 512)).astype(np.float32)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    codes = rng.integers(0, 4, len(V))
    _, classes, _ = build_partitioned(V, codes, 4, "IVF32,SQ4", POLICY)
    q = rng.normal(size=(60, V.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    one = classes.search_many(range(4), q, 1, effort=Effort(nprobe=4))
    two = classes.search_many(range(4), q, 2, effort=Effort(nprobe=4))
    for code in range(4):
        assert np.array_equal(one[code][1][:, 0], two[code][1][:, 0])
