"""Pipeline stages and strategy-owned parameters over HTTP: listed, validated, applied."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import Field

from exemplar.retrieval import SelectionOptions
from exemplar.retrieval.serving.strategies.base import _REGISTRY as strategy_registry
from exemplar.retrieval.serving.strategies.base import Params, Pick, Window, register_strategy

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


class _FarthestParams(Params):
    skip: int = Field(0, ge=0, description="Leave out this many of the farthest first.")


class _Farthest:
    """A strategy written as a user would add one: this class and its registration, nothing else."""

    name = "farthest"
    description = "The items least similar to the query (a toy, for this test)."
    needs_query = True
    takes_k_per_class = False
    per_class_note = ""
    Params = _FarthestParams

    def check(self, options: SelectionOptions) -> None:
        pass

    def per_class(self, options: SelectionOptions) -> bool:
        return False

    def space(self, snap):  # noqa: ANN001, ANN201 - a Snapshot
        return snap

    def select(self, snap, queries, self_rows, allowed, options):  # noqa: ANN001, ANN201
        V = np.asarray(snap.vectors[: snap.size], np.float32)
        out = []
        for q, skip in enumerate(self_rows):
            scores = V @ queries[q]
            order = [int(r) for r in np.argsort(scores, kind="stable") if r != skip]
            start = options.offset + options.params.skip
            rows = order[start:start + options.k]
            out.append(Window([Pick(r, float(scores[r]), options.offset + i) for i, r in enumerate(rows)]))
        return out


@pytest.fixture
def farthest() -> Iterator[None]:
    register_strategy(_Farthest)
    try:
        yield
    finally:
        strategy_registry.pop("farthest")


def test_a_strategy_is_one_registration(client: TestClient, pool: np.ndarray, farthest: None) -> None:
    listed = {s["name"]: s for s in client.get("/v1/strategies").json()["strategies"]}
    assert set(listed["farthest"]["parameters"]["properties"]) == {"skip"}
    q = pool[2] / np.linalg.norm(pool[2])
    body = {"query": {"embedding": q.tolist()}, "strategy": "farthest", "k": 3, "strategy_params": {"skip": 1}}
    response = client.post("/v1/pools/p/select", json=body)
    assert response.status_code == 200, response.text
    U = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    expected = [f"i{r:02d}" for r in np.argsort(U @ q, kind="stable")[1:4]]
    assert _ids(response.json()) == expected
    # Its parameters are validated by it, and the pipeline stages apply to it as to any strategy:
    # MMR with lambda 1 ranks its first 10 candidates by their score alone.
    refused = client.post("/v1/pools/p/select", json={**body, "strategy_params": {"skip": -1}})
    envelope(refused, 400, "invalid_request", "strategy_params.skip")
    staged = client.post("/v1/pools/p/select", json={**body, "diversity": {"lambda": 1.0, "depth": 10}})
    candidates = np.argsort(U @ q, kind="stable")[1:11]
    assert _ids(staged.json()) == [f"i{r:02d}" for r in sorted(candidates, key=lambda r: -(U[r] @ q))[:3]]
