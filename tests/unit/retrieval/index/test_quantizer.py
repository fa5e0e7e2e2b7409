"""The graph coarse quantizer: installed on load above the list threshold only, probing the lists
the flat scan probes, so results, recall and the tuned figures hold; saved in the flat format.

The threshold is forced low here (``GRAPH_MIN_LISTS``) so that the data stays small; the data is
seeded clustered vectors with held-out queries from the same mixture."""

from __future__ import annotations

import gc
from pathlib import Path

import faiss
import numpy as np
import pytest

from exemplar.retrieval.index import quantizer as qz
from exemplar.retrieval.index.auto import AutoIndexPolicy, measure_recall, tune
from exemplar.retrieval.index.partitioned import PartitionedClasses
from exemplar.retrieval.index.vectors import Effort, VectorIndex
from exemplar.retrieval.store.catalog import ItemRow
from exemplar.retrieval.store.segments import LoadedSegment, load_segment, write_segment
from tests.helpers import clustered_vectors

POLICY = AutoIndexPolicy(target_recall=0.9, sample_queries=100)
N, DIM, HELD_OUT = 8_000, 32, 200
LOW = 16  # the forced threshold: every index of these tests has more lists


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, list[str], np.ndarray]:
    V, labels, _ = clustered_vectors(n=N + HELD_OUT, dim=DIM, n_labels=5, n_domains=3, seed=21)
    return V[:N], labels[:N], V[N:]


@pytest.fixture(scope="module")
def folder(data, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    V, labels, _ = data
    rows = [ItemRow(uid=i, item_id=f"i{i}", label=labels[i], text=None, image=None, media_root=None, domain=None,
                    metadata=None) for i in range(len(V))]
    path = tmp_path_factory.mktemp("quantizer") / "s1"
    write_segment(path, rows, V, index_spec="IVF128,SQ4", policy=POLICY, build_requested=True)
    return path


def _load(folder: Path, threshold: int) -> LoadedSegment:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(qz, "GRAPH_MIN_LISTS", threshold)
        return load_segment(folder.name, folder)


@pytest.fixture(scope="module")
def flat(folder: Path) -> LoadedSegment:
    return _load(folder, 1 << 30)


@pytest.fixture(scope="module")
def graph(folder: Path) -> LoadedSegment:
    return _load(folder, LOW)


def _ivf(segment: LoadedSegment) -> faiss.IndexIVF:
    return faiss.extract_index_ivf(segment.index.index)


def _exact(V: np.ndarray, Q: np.ndarray, k: int) -> np.ndarray:
    return faiss.knn(Q, V, k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def _recall(I: np.ndarray, truth: np.ndarray) -> float:
    return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(I, truth)) / truth.size


def test_the_graph_replaces_the_flat_quantizer_at_the_threshold_and_not_below(folder: Path, flat, graph) -> None:  # noqa: ANN001
    nlist = _ivf(flat).nlist
    assert nlist > LOW
    assert isinstance(faiss.downcast_index(_ivf(flat).quantizer), faiss.IndexFlat)
    quantizer = faiss.downcast_index(_ivf(graph).quantizer)
    assert isinstance(quantizer, faiss.IndexHNSWFlat) and quantizer.ntotal == nlist
    assert quantizer.hnsw.efSearch == qz.graph_ef(_ivf(graph).nprobe)
    assert qz.uses_graph(_ivf(_load(folder, nlist)))
    assert not qz.uses_graph(_ivf(_load(folder, nlist + 1)))


def test_the_default_threshold_leaves_small_indexes_flat(flat, data) -> None:  # noqa: ANN001
    assert _ivf(flat).nlist < qz.GRAPH_MIN_LISTS
    untrained = faiss.index_factory(DIM, "IVF64,SQ4", faiss.METRIC_INNER_PRODUCT)
    assert not qz.install_graph(untrained, min_lists=1)  # no centroids yet: nothing to build on
    index = VectorIndex.build(data[0], "IVF64,SQ4").index
    assert not qz.install_graph(index)
    assert qz.install_graph(index, min_lists=64)
    assert not qz.install_graph(index, min_lists=64)  # already a graph


def test_exact_indexes_are_never_changed(data) -> None:  # noqa: ANN001
    V, _, Q = data
    index = VectorIndex.build(V, "Flat")
    assert not qz.install_graph(index.index, min_lists=1)
    assert index.exact
    D, I = index.search(Q[:20], 5)
    assert np.array_equal(I, _exact(V, Q[:20], 5))


def test_the_graph_probes_the_lists_the_flat_scan_probes(flat, graph, data) -> None:  # noqa: ANN001
    _, _, Q = data
    for nprobe in (1, _ivf(flat).nprobe, 8, 16, 32):
        _, If = _ivf(flat).quantizer.search(Q, nprobe)
        _, Ig = _ivf(graph).quantizer.search(Q, nprobe, params=qz.quantizer_params(_ivf(graph), nprobe))
        same = np.mean([set(a) == set(b) for a, b in zip(If, Ig)])
        assert same >= 0.99, (nprobe, same)


def test_topk_answers_as_with_the_flat_quantizer_and_recall_holds(flat, graph, data) -> None:  # noqa: ANN001
    V, _, Q = data
    Df, If = flat.index.search(Q, 10)
    Dg, Ig = graph.index.search(Q, 10)
    assert np.mean(np.all(If == Ig, axis=1)) >= 0.99
    assert np.allclose(Dg, np.einsum("qkd,qd->qk", V[np.maximum(Ig, 0)], Q), atol=1e-5)  # re-ranked: exact scores
    truth = _exact(V, Q, 10)
    assert _recall(Ig, truth) >= _recall(If, truth) - 0.005
    assert _recall(Ig, truth) >= POLICY.target_recall - 0.05


def test_the_tuned_recall_holds_on_the_graph(folder: Path, graph, data) -> None:  # noqa: ANN001
    """The recall recorded when nprobe was tuned (flat quantizer) is measured again, on the same
    sample, with the graph."""
    V, _, _ = data
    tuned = graph.stats["index"]
    sample = np.sort(np.random.default_rng(POLICY.seed).choice(len(V), size=min(POLICY.sample_queries, len(V)),
                                                                replace=False))
    recall, _ = measure_recall(graph.index, V, sample, tuned["k"])
    assert recall >= tuned["recall_at_k"] - 0.005
    assert recall >= POLICY.target_recall - 0.05


def test_balanced_searches_the_same_centroids_with_either_quantizer(flat, graph, data) -> None:  # noqa: ANN001
    _, _, Q = data
    assert isinstance(graph.classes, PartitionedClasses)
    assert np.array_equal(graph.classes._centroids, flat.classes._centroids)
    codes = list(range(len(flat.classes.rows)))
    found_flat = flat.classes.search_many(codes, Q, 3, needed=2)
    found_graph = graph.classes.search_many(codes, Q, 3, needed=2)
    for code in codes:
        assert np.array_equal(found_flat[code][1], found_graph[code][1])
        assert np.array_equal(found_flat[code][0], found_graph[code][0])


def test_efforts_and_filters_on_the_graph(flat, graph, data) -> None:  # noqa: ANN001
    V, _, Q = data
    nlist = _ivf(graph).nlist
    every = Effort(nprobe=nlist)  # every list: the graph must still reach all of them
    Df, If = flat.index.search(Q, 10, effort=every)
    Dg, Ig = graph.index.search(Q, 10, effort=every)
    assert np.array_equal(If, Ig)
    for effort in (Effort(scale=2.0), Effort(scale=0.5), Effort(nprobe=24)):
        If = flat.index.search(Q, 10, effort=effort)[1]
        Ig = graph.index.search(Q, 10, effort=effort)[1]
        assert np.mean(np.all(If == Ig, axis=1)) >= 0.98, effort
    D, I = graph.index.search(Q[:20], 10, effort=Effort(exact=True))
    assert np.array_equal(I, _exact(V, Q[:20], 10))
    allowed = np.ones(len(V), bool)
    allowed[::10] = False  # most rows: served by the index with a selector, not exactly
    If = flat.index.search(Q, 10, allowed)[1]
    Ig = graph.index.search(Q, 10, allowed)[1]
    assert np.all(allowed[Ig[Ig >= 0]])
    assert np.mean(np.all(If == Ig, axis=1)) >= 0.98


def test_save_writes_the_flat_quantizer_and_load_builds_the_graph_again(data, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    V, _, Q = data
    monkeypatch.setattr(qz, "GRAPH_MIN_LISTS", LOW)
    built = VectorIndex.build(V, "IVF64,SQ8")
    faiss.extract_index_ivf(built.index).nprobe = 6
    expected = built.index.search(Q, 10)[1]
    assert qz.install_graph(built.index)
    built.save(tmp_path / "index.faiss")
    assert qz.uses_graph(faiss.extract_index_ivf(built.index))  # the graph is back in place after saving
    on_disk = faiss.read_index(str(tmp_path / "index.faiss"))
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(on_disk).quantizer), faiss.IndexFlat)
    loaded = VectorIndex.load(tmp_path / "index.faiss", "IVF64,SQ8", {"nprobe": 6})  # lists memory-mapped
    ivf = faiss.extract_index_ivf(loaded.index)
    assert qz.uses_graph(ivf) and faiss.downcast_index(ivf.quantizer).hnsw.efSearch == qz.graph_ef(6)
    assert np.mean(np.all(loaded.index.search(Q, 10)[1] == expected, axis=1)) >= 0.99


def test_flat_quantizer_is_put_back_when_the_block_fails(data) -> None:  # noqa: ANN001
    V, _, _ = data
    built = VectorIndex.build(V, "IVF64,SQ8")
    ivf = faiss.extract_index_ivf(built.index)
    assert qz.install_graph(built.index, min_lists=LOW)
    with pytest.raises(RuntimeError), qz.flat_quantizer(built.index):
        assert not qz.uses_graph(ivf)
        raise RuntimeError("save failed")
    assert qz.uses_graph(ivf)


def test_indexes_with_graphs_are_dropped_and_reloaded_safely(folder: Path, data) -> None:  # noqa: ANN001
    _, _, Q = data
    first = _load(folder, LOW)
    want = first.index.search(Q, 5)[1]
    centroids = first.classes._centroids.copy()
    for _ in range(5):
        segment = _load(folder, LOW)
        assert np.array_equal(segment.index.search(Q, 5)[1], want)
        assert np.array_equal(segment.classes._centroids, centroids)
        del segment
        gc.collect()
    # The class view keeps the index (and so the graph holding its centroids) alive on its own.
    classes = first.classes
    del first
    gc.collect()
    assert np.array_equal(classes._centroids, centroids)
    assert classes.search_many(list(range(len(classes.rows))), Q[:3], 2)


def test_tuning_an_index_with_a_graph_keeps_its_depth_in_step_with_nprobe(data) -> None:  # noqa: ANN001
    V, _, Q = data
    index = VectorIndex.build(V, "IVF64,SQ8")
    assert qz.install_graph(index.index, min_lists=LOW)
    stats = tune(index, V, POLICY)
    ivf = faiss.extract_index_ivf(index.index)
    assert ivf.nprobe == stats["params"]["nprobe"]
    assert faiss.downcast_index(ivf.quantizer).hnsw.efSearch == qz.graph_ef(ivf.nprobe)
    assert stats["recall_at_k"] >= POLICY.target_recall - 0.02
