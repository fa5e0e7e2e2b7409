"""Pipeline stages and strategy-owned parameters over HTTP: listed, validated, applied."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.unit.app.envelopes import envelope


@pytest.fixture
def pool(client: TestClient) -> np.ndarray:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 8))
    V = np.vstack([centres[i % 4] + 0.3 * rng.normal(size=8) for i in range(48)])
    client.post("/v1/pools", json={"name": "p", "encoder": "precomputed:8"})
    items = [{"id": f"i{i:02d}", "label": "abcd"[i % 4], "embedding": V[i].tolist()} for i in range(48)]
    assert client.post("/v1/pools/p/items", json={"items": items}).status_code == 201
    return V


def _ids(body: dict) -> list[str]:
    return [d["id"] for d in sorted(body["demonstrations"], key=lambda d: d["rank"])]


def test_strategies_and_stages_are_listed_with_their_parameters(client: TestClient) -> None:
    body = client.get("/v1/strategies").json()
    strategies = {s["name"]: s for s in body["strategies"]}
    assert {"topk", "balanced", "random", "invariant"} <= set(strategies)
    assert set(strategies["invariant"]["parameters"]["properties"]) == {"base"}
    assert strategies["topk"]["parameters"]["properties"] == {} and not strategies["random"]["needs_query"]
    (diversity,) = [s for s in body["stages"] if s["name"] == "diversity"]
    assert set(diversity["parameters"]["properties"]) == {"lambda", "depth", "dedup"}
    document = client.get("/openapi.json").json()
    select = document["components"]["schemas"]["SelectRequest"]
    assert "diversity" in select["properties"] and "strategy_params" in select["properties"]


def test_diversity_over_http(client: TestClient, pool: np.ndarray) -> None:
    query = {"embedding": pool[5].tolist()}
    plain = client.post("/v1/pools/p/select", json={"query": query, "k": 6}).json()
    diverse = client.post("/v1/pools/p/select", json={"query": query, "k": 6,
                                                       "diversity": {"lambda": 0.3, "depth": 20}})
    assert diverse.status_code == 200, diverse.text
    body = diverse.json()
    assert _ids(body) != _ids(plain) and [d["rank"] for d in sorted(body["demonstrations"], key=lambda d: d["rank"])] == list(range(6))
    # Fewer items of the query's own cluster once novelty counts.
    own = lambda b: sum(d["label"] == "b" for d in b["demonstrations"])  # noqa: E731 - item 5 is of label 'b'
    assert own(body) < own(plain)
    batch = client.post("/v1/pools/p/select/batch", json={"queries": [query, query], "k": 6,
                                                           "diversity": {"lambda": 0.3, "depth": 20}}).json()
    assert [_ids(r) for r in batch["results"]] == [_ids(body), _ids(body)]
    quotas = client.post("/v1/pools/p/select", json={"query": query, "strategy": "balanced", "k_per_class": 2,
                                                      "diversity": {"lambda": 0.0, "depth": 6}}).json()
    assert sorted(sum(d["label"] == c for d in quotas["demonstrations"]) for c in "abcd") == [2, 2, 2, 2]


@pytest.mark.parametrize(("body", "param"), [
    ({"strategy": "topk", "strategy_params": {"base": "topk"}}, "strategy_params"),
    ({"strategy": "invariant", "strategy_params": {"bse": "topk"}}, "strategy_params.bse"),
    ({"strategy": "invariant", "k_per_class": 2, "strategy_params": {"base": "topk"}}, "k_per_class"),
    ({"strategy": "invariant", "invariant_base": "balanced", "strategy_params": {"base": "topk"}},
     "strategy_params.base"),
    ({"diversity": {"lambda": 1.5}}, "diversity.lambda"),
    ({"diversity": {"depth": 0}}, "diversity.depth"),
    ({"diversity": {"mmr": True}}, "diversity.mmr"),
])
def test_parameters_refused_in_the_envelope(client: TestClient, pool: np.ndarray, body: dict, param: str) -> None:
    before = client.get("/v1/pools/p").json()
    response = client.post("/v1/pools/p/select", json={"query": {"embedding": pool[0].tolist()}, "k": 4, **body})
    envelope(response, 400, "invalid_request", param)
    assert client.get("/v1/pools/p").json() == before
