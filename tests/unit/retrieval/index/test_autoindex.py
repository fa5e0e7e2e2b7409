"""index: auto — the choice by size and memory, tuning to a recall target, recall recorded."""

from __future__ import annotations

import numpy as np
import pytest

from exemplar.retrieval import NewItem, PoolService
from exemplar.retrieval.index.auto import AutoIndexPolicy, build_index, choose_factory, reaches
from tests.helpers import close_pools, clustered_vectors, open_pools

SQLITE_ONLY = pytest.mark.parametrize("catalog_url", [None], ids=["sqlite"])


@pytest.mark.parametrize(("n", "dim", "budget", "expected"), [
    (1_000, 512, 8 * 1024**3, "Flat"),
    (16_384, 512, 8 * 1024**3, "Flat"),
    (16_385, 512, 8 * 1024**3, "IVF420,SQ4"),
    (99_999, 64, 8 * 1024**3, "Flat"),
    (150_000, 512, 8 * 1024**3, "IVF2048,SQ4"),
    (2_000_000, 512, 8 * 1024**3, "IVF4096,SQ4"),
    (100_000_000, 512, 8 * 1024**3, "IVF32768,PQ64"),
    (150_000, 512, 100 * 1024**2, "IVF2048,PQ64"),
    (1_000_000, 96, 60 * 1024**2, "IVF4096,PQ48"),
])
def test_choice_by_size_and_memory(n: int, dim: int, budget: int, expected: str) -> None:
    assert choose_factory(n, dim, AutoIndexPolicy(memory_budget_bytes=budget)) == expected


def test_hnsw_only_where_the_policy_asks_for_it() -> None:
    assert choose_factory(150_000, 512, AutoIndexPolicy(hnsw_below=250_000)) == "HNSW32"
    assert choose_factory(300_000, 512, AutoIndexPolicy(hnsw_below=250_000)).endswith(",SQ4")


def test_tuning_reaches_the_recall_target_and_records_it() -> None:
    V, _, _ = clustered_vectors(n=20_000, dim=32, n_labels=100, n_domains=3, seed=1)
    policy = AutoIndexPolicy(exact_max_bytes=1_000 * 32 * 4, hnsw_below=1_000, target_recall=0.9)
    index, stats = build_index(V, "auto", policy)
    assert stats["factory"].startswith("IVF") and stats["requested"] == "auto"
    assert stats["recall_at_k"] >= 0.9 and stats["params"]["nprobe"] >= 1
    assert index.params == stats["params"]
    exact, exact_stats = build_index(V, "Flat", policy)
    assert exact_stats["recall_at_k"] == 1.0 and exact_stats["exact"] is True


def test_a_recall_reaches_its_target_only_with_confidence() -> None:
    # 2,000 neighbours measured: 0.9525 is within noise of 0.95, 0.962 is not.
    assert not reaches(0.9525, 2_000, 0.95)
    assert reaches(0.962, 2_000, 0.95)
    assert reaches(1.0, 10, 0.95)  # no misses at all
    assert not reaches(0.94, 100_000, 0.95)
    # more evidence, smaller margin
    assert reaches(0.953, 200_000, 0.95) and not reaches(0.953, 2_000, 0.95)


@SQLITE_ONLY  # a second store opens the data directory's SQLite catalog by path
def test_version_stats_carry_the_index_and_reload_its_parameters(pools: PoolService) -> None:
    V, labels, _ = clustered_vectors(n=3_000, dim=16, n_labels=30, n_domains=2, seed=2)
    pools.create(name="ivf", encoder="precomputed:16", index="IVF64,Flat")
    pools.add_items("ivf", [NewItem(id=f"i{i}", label=labels[i], embedding=V[i]) for i in range(len(V))])
    stats = pools.stats("ivf").versions[0].stats["index"]
    assert stats["factory"] == "IVF64,Flat" and 0 < stats["recall_at_k"] <= 1 and "nprobe" in stats["params"]
    reopened = open_pools(pools.store.data_dir, pools.encoders)
    try:
        snap = reopened.snapshots.snapshot("ivf")
        assert snap.index.params == stats["params"]
        import faiss

        assert faiss.extract_index_ivf(snap.index.index).nprobe == stats["params"]["nprobe"]
    finally:
        close_pools(reopened)
    assert np.isfinite(stats["latency_ms"])
