"""The selection pipeline's stages against brute-force oracles, and strategy-owned parameters."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from exemplar.errors import InvalidRequest
from exemplar.retrieval import Query, SelectionOptions, SelectionService
from exemplar.retrieval.serving.stages import list_stages
from exemplar.retrieval.serving.stages.diversity import DiversityParams, mmr_order
from tests.helpers import oracle_balanced, oracle_topk


def _unit(V: np.ndarray) -> np.ndarray:
    V = V.astype(np.float64)
    return V / np.linalg.norm(V, axis=1, keepdims=True)


def oracle_mmr(V: np.ndarray, q: np.ndarray, rows: list[int], lam: float, dedup: float | None = None) -> list[int]:
    """Greedy MMR over ``rows`` (in their given order), spelled out one candidate at a time."""
    U = _unit(V)
    scores = [float(U[r] @ q) for r in rows]
    taken: list[int] = []
    remaining = list(range(len(rows)))
    while remaining:
        best, best_value = None, -np.inf
        for i in remaining:
            redundancy = max((float(U[rows[i]] @ U[rows[j]]) for j in taken), default=0.0)
            if dedup is not None and taken and redundancy >= dedup:
                continue
            value = lam * scores[i] - (1 - lam) * redundancy
            if value > best_value:
                best, best_value = i, value
        if best is None:
            break
        taken.append(best)
        remaining.remove(best)
    return [rows[i] for i in taken]


def _query(V: np.ndarray, seed: int) -> np.ndarray:
    q = _unit(V)[seed * 13] + 0.05 * np.random.default_rng(seed).normal(size=V.shape[1])
    return q / np.linalg.norm(q)


def _ids(rows: list[int]) -> list[str]:
    return [f"v{r:04d}" for r in rows]


def _ranked(result) -> list[str]:  # noqa: ANN001 - a SelectionResult
    return [d.id for d in sorted(result.demonstrations, key=lambda d: d.rank)]


def test_stages_are_registered_with_their_parameters() -> None:
    stages = {s.name: s for s in list_stages()}
    assert "diversity" in stages
    assert set(stages["diversity"].Params.model_json_schema()["properties"]) == {"lambda", "depth", "dedup"}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("lam", "dedup"), [(0.5, None), (0.8, None), (0.3, 0.9), (1.0, None)])
def test_topk_with_diversity_equals_brute_force_mmr(vector_pool, selection: SelectionService, seed: int, lam: float,
                                                    dedup: float | None) -> None:
    name, V, _, _ = vector_pool
    q = _query(V, seed)
    candidates = oracle_topk(V, q.astype(np.float32), k=24)
    expected = oracle_mmr(V, q, candidates, lam, dedup)
    stage = {"diversity": {"lambda": lam, "depth": 24, **({"dedup": dedup} if dedup is not None else {})}}
    for offset, k in ((0, 8), (5, 6)):
        result = selection.select(name, Query(embedding=q.tolist()), "topk",
                                  SelectionOptions(k=k, offset=offset, stages=stage))
        assert _ranked(result) == _ids(expected[offset:offset + k])
        assert [d.rank for d in sorted(result.demonstrations, key=lambda d: d.rank)] == list(
            range(offset, offset + len(result.demonstrations)))
    if lam == 1.0:  # no weight on novelty: the strategy's own order
        plain = selection.select(name, Query(embedding=q.tolist()), "topk", SelectionOptions(k=8))
        assert _ranked(plain) == _ids(expected[:8])


def test_diversity_changes_the_selection_and_dedup_holds(vector_pool, selection: SelectionService) -> None:
    name, V, _, _ = vector_pool
    U = _unit(V)
    q = _query(V, 1)
    plain = selection.select(name, Query(embedding=q.tolist()), "topk", SelectionOptions(k=8))
    diverse = selection.select(name, Query(embedding=q.tolist()), "topk",
                               SelectionOptions(k=8, stages={"diversity": {"lambda": 0.2, "depth": 40, "dedup": 0.95}}))
    rows = [int(d.id[1:]) for d in diverse.demonstrations]
    assert set(rows) != {int(d.id[1:]) for d in plain.demonstrations}
    sims = U[rows] @ U[rows].T
    assert (sims[~np.eye(len(rows), dtype=bool)] < 0.95).all()
    mean_sim = lambda rs: float((U[rs] @ U[rs].T)[~np.eye(len(rs), dtype=bool)].mean())  # noqa: E731
    assert mean_sim(rows) < mean_sim([int(d.id[1:]) for d in plain.demonstrations])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("k", "k_per_class"), [(None, 2), (7, None), (13, None)])
def test_balanced_with_diversity_keeps_exact_quotas(vector_pool, selection: SelectionService, seed: int,
                                                     k: int | None, k_per_class: int | None) -> None:
    name, V, labels, _ = vector_pool
    q = _query(V, seed)
    depth = 10
    options = SelectionOptions(k=k, k_per_class=k_per_class, stages={"diversity": {"lambda": 0.4, "depth": depth}})
    result = selection.select(name, Query(embedding=q.tolist()), "balanced", options)
    plain = selection.select(name, Query(embedding=q.tolist()), "balanced",
                             SelectionOptions(k=k, k_per_class=k_per_class))
    # The same number of items of every class as without the stage.
    assert Counter(d.label for d in result.demonstrations) == Counter(d.label for d in plain.demonstrations)
    # Within each class: MMR over that class's best 'depth', in the round robin's class order.
    per_class_best = oracle_balanced(V, labels, q.astype(np.float32), k_per_class=depth)
    by_class: dict[str, list[int]] = {}
    for r in per_class_best:
        by_class.setdefault(labels[r], []).append(r)
    for label, rows in by_class.items():
        shown = [int(d.id[1:]) for d in sorted(result.demonstrations, key=lambda d: d.rank) if d.label == label]
        assert shown == oracle_mmr(V, q, rows, 0.4)[:len(shown)]


def test_random_per_class_with_diversity_keeps_quotas(vector_pool, selection: SelectionService) -> None:
    name, _, _, _ = vector_pool
    result = selection.select(name, Query(), "random",
                              SelectionOptions(k_per_class=3, seed=4, stages={"diversity": {"lambda": 0.0, "depth": 12}}))
    assert sorted(Counter(d.label for d in result.demonstrations).values()) == [3] * 5


def test_mmr_order_edge_cases() -> None:
    vectors = np.eye(3)
    assert mmr_order(vectors[:0], np.zeros(0), DiversityParams()) == []
    same = np.vstack([vectors[0], vectors[0], vectors[1]])
    # Two identical candidates: dedup at 0.99 keeps one of them.
    assert mmr_order(same, np.array([0.9, 0.8, 0.1]), DiversityParams(dedup=0.99)) == [0, 2]
    # lambda 0: after the first, the most different.
    assert mmr_order(same, np.array([0.9, 0.8, 0.1]), DiversityParams(**{"lambda": 0.0}))[:2] == [0, 2]


@pytest.mark.parametrize(("strategy", "options", "param", "words"), [
    ("topk", SelectionOptions(k=4, params={"base": "topk"}), "strategy_params", "takes no parameters"),
    ("invariant", SelectionOptions(k=4, params={"bse": "topk"}), "strategy_params.bse", "its parameters: base"),
    ("invariant", SelectionOptions(k=4, params={"base": "nearest"}), "strategy_params.base", "invariant"),
    ("topk", SelectionOptions(k=4, stages={"diversity": {"lambda": 2}}), "diversity.lambda", "less than or equal"),
    ("topk", SelectionOptions(k=4, stages={"diversity": {"depth": "8"}}), "diversity.depth", "integer"),
    ("topk", SelectionOptions(k=4, stages={"shuffle": {}}), "shuffle", "valid stages: 'diversity'"),
])
def test_parameters_are_validated_by_their_owner(vector_pool, selection: SelectionService, strategy: str,
                                                 options: SelectionOptions, param: str, words: str) -> None:
    name, V, _, _ = vector_pool
    with pytest.raises(InvalidRequest) as refused:
        selection.select(name, Query(embedding=_query(V, 0).tolist()), strategy, options)
    assert refused.value.param == param and words in refused.value.message


def test_invariant_base_from_strategy_params_refuses_k_per_class(vector_pool, selection: SelectionService) -> None:
    name, V, _, _ = vector_pool
    with pytest.raises(InvalidRequest) as refused:
        selection.select(name, Query(embedding=_query(V, 0).tolist()), "invariant",
                         SelectionOptions(k_per_class=2, params={"base": "topk"}))
    assert refused.value.param == "k_per_class"
