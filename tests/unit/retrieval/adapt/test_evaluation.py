"""Leave-one-domain-out evaluation on seeded data with domain shift."""

from __future__ import annotations

import numpy as np
import pytest

from exemplar.app.adapters import CCITrainer
from exemplar.errors import InvalidRequest
from exemplar.retrieval import NewItem, PoolService, evaluate_lodo
from exemplar.retrieval.adapt.evaluation import Interval, bootstrap, parse_eval_strategy
from exemplar.samples import domain_dominant_embeddings


@pytest.fixture
def shifted(pools: PoolService):
    V, labels, domains = domain_dominant_embeddings(per_class_per_domain=30, dim=32, seed=11)
    pools.create(name="shift", encoder="precomputed:32")
    pools.add_items("shift", [NewItem(id=f"s{i:04d}", label=labels[i], domain=domains[i], embedding=V[i])
                              for i in range(len(V))])
    return pools.snapshots.snapshot("shift")


def test_invariant_beats_topk_under_domain_shift(shifted) -> None:
    report = evaluate_lodo(shifted, k=8, trainer=CCITrainer("cpu"), resamples=500)
    assert report.folds == {f"domain-{d}": 180 for d in range(4)} and report.queries == 720
    diff = report.differences["invariant:topk - topk"]["precision_at_k"]
    assert diff.low > 0, diff
    m = report.metrics
    assert m["random"]["precision_at_k"].mean == pytest.approx(1 / 6, abs=0.03)
    assert m["balanced"]["hit_rate"].mean == 1.0 and m["invariant:balanced"]["hit_rate"].mean == 1.0
    for strategy in m.values():
        for interval in strategy.values():
            assert interval.low <= interval.mean <= interval.high


def test_report_is_deterministic_and_serialisable(shifted) -> None:
    a = evaluate_lodo(shifted, strategies=["topk", "random"], k=4, resamples=200, max_queries_per_domain=40)
    b = evaluate_lodo(shifted, strategies=["topk", "random"], k=4, resamples=200, max_queries_per_domain=40)
    assert a.metrics == b.metrics and a.queries == 160
    data = a.to_dict()
    assert set(data["metrics"]) == {"topk", "random"} and "topk - random" in data["differences"]


def test_no_leakage_from_the_held_out_domain(shifted, monkeypatch) -> None:
    seen_domains = []

    class Recording(CCITrainer):
        def __call__(self, vectors, labels, domains, params, **kwargs):
            seen_domains.append(set(np.unique(domains).tolist()))
            return super().__call__(vectors, labels, domains, {"epochs": 2}, **kwargs)

    evaluate_lodo(shifted, strategies=["invariant:topk"], k=4, trainer=Recording("cpu"), resamples=50,
                  max_queries_per_domain=10)
    # domain codes are shifted by one for training (0 is "no domain"): each fold trains on 3 of 4
    assert [len(s) for s in seen_domains] == [3, 3, 3, 3]
    assert set.union(*seen_domains) == {1, 2, 3, 4}
    for fold, domains in enumerate(seen_domains):
        assert fold + 1 not in domains


def test_bad_evaluations_are_refused(pools: PoolService, shifted) -> None:
    with pytest.raises(InvalidRequest, match="needs an adapter trainer"):
        evaluate_lodo(shifted, strategies=["invariant"])
    with pytest.raises(InvalidRequest, match="unknown strategy"):
        evaluate_lodo(shifted, strategies=["nearest"])
    with pytest.raises(InvalidRequest, match="base"):
        parse_eval_strategy("topk:balanced")
    pools.create(name="one", encoder="precomputed:4")
    pools.add_items("one", [NewItem(id=f"o{i}", label=str(i % 2), domain="d", embedding=np.eye(4)[i % 4] + 0.1) for i in range(8)])
    with pytest.raises(InvalidRequest, match="at least 2 domains"):
        evaluate_lodo(pools.snapshots.snapshot("one"), strategies=["topk"])


def test_bootstrap_interval_covers_the_mean() -> None:
    rng = np.random.default_rng(0)
    values = rng.random(400)
    interval = bootstrap(values, rng, 1000)
    assert interval.low < values.mean() < interval.high and interval.high - interval.low < 0.1
    assert Interval(0.1, 0.05, 0.2).excludes_zero() and not Interval(0.1, -0.05, 0.2).excludes_zero()
