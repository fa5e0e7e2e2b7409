"""The FAISS wrapper, checked against exact search on seeded clustered data."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from exemplar.errors import InvalidRequest
from exemplar.retrieval import VectorIndex, gpu_available
from exemplar.retrieval.index.vectors import normalize
from tests.helpers import clustered_vectors


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    V, _, _ = clustered_vectors(n=2000, dim=32, n_labels=10, n_domains=2, seed=3)
    Q, _, _ = clustered_vectors(n=50, dim=32, n_labels=10, n_domains=2, seed=4)
    return V, Q


def exact(V: np.ndarray, Q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    S = Q @ V.T
    if allowed is not None:
        S[:, ~allowed] = -np.inf
    I = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, I, axis=1), I


def test_flat_equals_exact_search(data) -> None:
    V, Q = data
    D, I = VectorIndex.build(V).search(Q, 10)
    D_ref, I_ref = exact(V, Q, 10)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, rtol=1e-5, atol=1e-5)


def test_filtered_search_equals_exact_over_the_allowed_rows(data) -> None:
    V, Q = data
    allowed = np.random.default_rng(0).random(len(V)) < 0.1
    D, I = VectorIndex.build(V).search(Q, 10, allowed)
    _, I_ref = exact(V, Q, 10, allowed)
    np.testing.assert_array_equal(I, I_ref)
    assert allowed[I].all()


def test_fewer_allowed_rows_than_k_pads_with_minus_one(data) -> None:
    V, Q = data
    allowed = np.zeros(len(V), bool)
    allowed[[3, 9]] = True
    _, I = VectorIndex.build(V).search(Q[:2], 5, allowed)
    assert (np.sort(I[:, :2], axis=1) == [3, 9]).all() and (I[:, 2:] == -1).all()


@pytest.mark.parametrize("factory", ["IVF16,Flat", "HNSW16", "IVF16,PQ8"])
def test_any_factory_string_builds_and_has_high_recall(data, factory: str) -> None:
    V, Q = data
    index = VectorIndex.build(V, factory)
    _, I = index.search(Q, 10)
    _, I_ref = exact(V, Q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, I_ref)])
    assert index.factory == factory and recall > 0.3


def test_save_and_load_give_the_same_results(data, tmp_path: Path) -> None:
    V, Q = data
    index = VectorIndex.build(V, "Flat")
    index.save(tmp_path / "x.faiss")
    loaded = VectorIndex.load(tmp_path / "x.faiss", "Flat")
    assert loaded.ntotal == len(V)
    np.testing.assert_array_equal(index.search(Q, 5)[1], loaded.search(Q, 5)[1])


def test_bad_factory_is_a_client_error(data) -> None:
    with pytest.raises(InvalidRequest) as info:
        VectorIndex.build(data[0], "NoSuchIndex")
    assert info.value.param == "index"


def test_normalize_gives_unit_rows() -> None:
    X = normalize(np.array([[3.0, 4.0], [0.0, 2.0]]))
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="faiss has no GPU support or no GPU is present")
def test_gpu_index_matches_cpu(data) -> None:
    V, Q = data
    cpu = VectorIndex.build(V)
    gpu = VectorIndex.build(V)
    assert gpu.to_gpu()
    D_cpu, I_cpu = cpu.search(Q, 10)
    D_gpu, I_gpu = gpu.search(Q, 10)
    np.testing.assert_allclose(D_gpu, D_cpu, rtol=1e-4, atol=1e-4)
    assert np.mean(I_gpu == I_cpu) > 0.99


@pytest.mark.parametrize("factory", ["HNSW16", "IVF32,Flat"])
def test_filtered_search_on_ann_indexes_finds_subsets_far_from_the_query(data, factory: str, monkeypatch) -> None:
    from exemplar.retrieval.index import vectors as index_module

    V, Q = data
    index = VectorIndex.build(V, factory)
    if factory.startswith("IVF"):
        import faiss

        faiss.extract_index_ivf(index.index).nprobe = 1
    far = np.argsort(V @ Q[0])[:300]  # the 300 rows least similar to the query
    allowed = np.zeros(len(V), bool)
    allowed[far] = True
    _, I_ref = exact(V, Q[:1], 5, allowed)
    _, I = index.search(Q[:1], 5, allowed)  # small subset: exact over the subset
    np.testing.assert_array_equal(I, I_ref)
    monkeypatch.setattr(index_module, "EXACT_SUBSET_ROWS", 0)  # force the ANN path and its fallback
    _, I = index.search(Q[:1], 5, allowed)
    assert (I >= 0).all() and allowed[I].all()
    np.testing.assert_array_equal(I, I_ref)


@pytest.mark.parametrize("factory", ["IVF32,SQ4", "IVF32,SQ8", "IVF32,PQ8"])
def test_indexes_over_codes_return_exact_scores_from_the_mapped_vectors(data, tmp_path: Path, factory: str) -> None:
    V, Q = data
    np.save(tmp_path / "v.npy", V)
    built = VectorIndex.build(V, factory)
    built.save(tmp_path / "i.faiss")
    index = VectorIndex.load(tmp_path / "i.faiss", factory, {"nprobe": 8})
    index.vectors = np.load(tmp_path / "v.npy", mmap_mode="r")
    assert index.reranks
    D, I = index.search(Q, 10)
    # The scores are the exact inner products of the rows returned, not the codes' estimates.
    np.testing.assert_allclose(D, np.einsum("qkd,qd->qk", V[I], Q), rtol=1e-5, atol=1e-5)
    _, I_ref = exact(V, Q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, I_ref)])
    assert recall >= 0.9, recall
    # Filtered searches are re-scored the same way.
    allowed = np.zeros(len(V), bool)
    allowed[::3] = True
    D, I = index.search(Q, 5, allowed)
    assert allowed[I[I >= 0]].all()
    np.testing.assert_allclose(D, np.einsum("qkd,qd->qk", V[I], Q), rtol=1e-5, atol=1e-5)


def test_a_lone_search_gets_every_core_and_overlapping_searches_one_each() -> None:
    from exemplar.retrieval.index import vectors

    cores = vectors._cores
    try:
        vectors.set_search_threads(0)
        assert vectors.search_threads(64) == cores  # a build's tuning, outside any request
        with vectors.searching():
            assert vectors.search_threads(20) == cores and faiss.omp_get_max_threads() == cores
            assert vectors.search_threads(1) == 1  # one query: not worth waking a team
            with vectors.searching():  # a second request in flight
                assert vectors.search_threads(20) == 1 and faiss.omp_get_max_threads() == 1
            assert vectors.search_threads(20) == cores
        vectors.set_search_threads(0, processes=2)  # two server processes share the cores
        with vectors.searching():
            assert vectors.search_threads(20) == max(1, cores // 2)
        vectors.set_search_threads(3)
        with vectors.searching(), vectors.searching():
            assert vectors.search_threads(1) == 3
    finally:
        vectors.set_search_threads(0)
        faiss.omp_set_num_threads(cores)


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,SQ4", "HNSW16"])
def test_a_search_can_ask_for_another_depth_or_an_exact_scan(data, factory: str) -> None:
    from exemplar.retrieval import Effort

    V, Q = data
    index = VectorIndex.build(V, factory)
    index.vectors = V
    if factory.startswith("IVF"):
        faiss.extract_index_ivf(index.index).nprobe = 2
    D_ref, I_ref = exact(V, Q, 10)

    def recall(I: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, I_ref)]))

    D, I = index.search(Q, 10, effort=Effort(exact=True))
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, atol=1e-5)
    tuned = recall(index.search(Q, 10)[1])
    deeper = recall(index.search(Q, 10, effort=Effort(scale=16.0))[1])
    assert deeper >= tuned and deeper > 0.9
    if factory.startswith("IVF"):
        # every list probed: exact on IVF-Flat, exact after the re-rank on the codes
        assert recall(index.search(Q, 10, effort=Effort(nprobe=32))[1]) >= (1.0 if factory.endswith("Flat") else 0.9)
        assert recall(index.search(Q, 10, effort=Effort(nprobe=1))[1]) <= tuned
    # a filter and an effort together: the subset, searched exactly
    allowed = np.zeros(len(V), bool)
    allowed[::3] = True
    _, I = index.search(Q, 5, allowed, Effort(exact=True))
    assert set(I.ravel().tolist()) <= set(np.flatnonzero(allowed).tolist())
    if factory.startswith("IVF"):
        assert faiss.extract_index_ivf(index.index).nprobe == 2  # the tuned setting is left as it was


def test_blas_threshold_counts_queries_in_either_faiss_convention() -> None:
    from exemplar.retrieval.index.vectors import BLAS_MIN_QUERIES, blas_threshold

    # faiss releases with a default of 20 count query rows; 1.15 (default 128,000) counts rows x dim:
    # a threshold in queries there would send a single query through BLAS (several times slower).
    assert blas_threshold(20) == BLAS_MIN_QUERIES
    assert blas_threshold(128_000) == BLAS_MIN_QUERIES * 512
    assert blas_threshold(faiss.cvar.distance_compute_blas_threshold) == faiss.cvar.distance_compute_blas_threshold
