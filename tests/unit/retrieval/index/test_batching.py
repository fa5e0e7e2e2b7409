"""Micro-batching: searches that arrive while one runs share the next FAISS call, and every caller
gets exactly the rows a search of its own would have returned."""

from __future__ import annotations

import threading
import time

import faiss
import numpy as np
import pytest

from exemplar.retrieval.index.batching import SearchBatcher
from exemplar.retrieval.index.vectors import VectorIndex
from tests.helpers import clustered_vectors


def test_queued_searches_share_one_call_with_exact_answers() -> None:
    V, _, _ = clustered_vectors(n=3_000, dim=16, n_labels=10, n_domains=2, seed=1)
    flat = faiss.IndexFlatIP(16)
    flat.add(V)
    gate = threading.Event()
    sizes: list[int] = []

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sizes.append(len(q))
        if len(sizes) == 1:
            gate.wait(timeout=30)  # hold the first call so that the others queue behind it
        return flat.search(q, k)

    batcher = SearchBatcher(search)
    queries = [V[i : i + 1 + i % 3] for i in range(0, 90, 9)]  # 10 callers, 1 to 3 rows each
    ks = [3 + i % 4 for i in range(len(queries))]
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def call(i: int) -> None:
        results[i] = batcher.search(queries[i], ks[i])

    first = threading.Thread(target=call, args=(0,))
    first.start()
    deadline = time.monotonic() + 30
    while not sizes and time.monotonic() < deadline:
        time.sleep(0.001)
    others = [threading.Thread(target=call, args=(i,)) for i in range(1, len(queries))]
    for t in others:
        t.start()
    while len(batcher._queue) < len(others) and time.monotonic() < deadline:  # noqa: SLF001 - wait for the queue
        time.sleep(0.001)
    gate.set()
    for t in [first, *others]:
        t.join(timeout=30)
    assert sizes == [len(queries[0]), sum(len(q) for q in queries[1:])]  # two calls in all
    assert batcher.calls == 2 and batcher.batched == len(others)
    for i, q in enumerate(queries):
        D, I = flat.search(q, ks[i])
        assert np.array_equal(results[i][1], I) and np.allclose(results[i][0], D)


def test_a_lone_search_runs_at_once_and_errors_reach_every_caller() -> None:
    batcher = SearchBatcher(lambda q, k: (np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)))
    D, I = batcher.search(np.ones((2, 4), np.float32), 3)
    assert D.shape == (2, 3) and batcher.calls == 1 and batcher.batched == 0

    def boom(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("index gone")

    failing = SearchBatcher(boom)
    with pytest.raises(RuntimeError, match="index gone"):
        failing.search(np.ones((1, 4), np.float32), 1)
    with pytest.raises(RuntimeError):  # not stuck after a failure: the next caller leads again
        failing.search(np.ones((1, 4), np.float32), 1)
    assert not failing._busy  # noqa: SLF001


def test_concurrent_index_searches_match_serial_ones() -> None:
    V, _, _ = clustered_vectors(n=5_000, dim=32, n_labels=20, n_domains=2, seed=2)
    index = VectorIndex.build(V, "IVF64,Flat")
    index.index.nprobe = 8
    Q = V[:200] + 0.01
    expected = [index.index.search(Q[i : i + 1], 5) for i in range(len(Q))]
    got: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def worker(start: int) -> None:
        for i in range(start, len(Q), 8):
            got[i] = index.search(Q[i : i + 1], 5)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i, (D, I) in enumerate(expected):
        assert np.array_equal(got[i][1], I) and np.allclose(got[i][0], D, atol=1e-5)
