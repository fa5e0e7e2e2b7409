"""select and select/batch through the real app."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.helpers import clustered_vectors, oracle_balanced, oracle_topk


@pytest.fixture
def pool(client: TestClient) -> tuple[np.ndarray, list[str]]:
    V, labels, domains = clustered_vectors(n=300, dim=16, n_labels=4, n_domains=2, seed=11)
    client.post("/v1/pools", json={"name": "v", "encoder": "precomputed:16"})
    items = [{"id": f"v{i:04d}", "label": labels[i], "domain": domains[i], "embedding": V[i].tolist()} for i in range(len(V))]
    assert client.post("/v1/pools/v/items", json={"items": items}).status_code == 201
    return V, labels


def ranked(body: dict) -> list[int]:
    return [int(d["id"][1:]) for d in sorted(body["demonstrations"], key=lambda d: d["rank"])]


def test_select_matches_the_oracle_over_http(client: TestClient, pool) -> None:
    V, labels = pool
    q = V[17]
    stored = np.asarray(client.app.state.services.snapshots.snapshot("v").vectors)  # float32 as stored
    r = client.post("/v1/pools/v/select", json={"query": {"item_id": "v0017"}, "strategy": "balanced", "k_per_class": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert ranked(body) == oracle_balanced(stored, labels, stored[17], k_per_class=2, skip=17)
    assert Counter(d["label"] for d in body["demonstrations"]) == {lab: 2 for lab in set(labels)}
    assert set(body) == {"pool", "version", "encoder", "strategy", "demonstrations", "timing_ms", "shortfall"}
    assert body["shortfall"] == {}
    assert set(body["demonstrations"][0]) == {"id", "label", "text", "image", "domain", "score", "rank", "metadata"}
    r = client.post("/v1/pools/v/select", json={"query": {"embedding": q.tolist()}, "strategy": "topk", "k": 6, "offset": 3})
    assert ranked(r.json()) == oracle_topk(stored, stored[17], k=6, offset=3)


def test_batch_returns_one_result_per_query(client: TestClient, pool) -> None:
    queries = [{"item_id": "v0001"}, {"item_id": "v0002"}, {"embedding": pool[0][3].tolist()}]
    r = client.post("/v1/pools/v/select/batch", json={"queries": queries, "strategy": "balanced", "k": 4})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    for query, result in zip(queries, results):
        single = client.post("/v1/pools/v/select", json={"query": query, "strategy": "balanced", "k": 4}).json()
        assert ranked(result) == ranked(single)


def test_next_window_through_offset(client: TestClient, pool) -> None:
    seen: list[str] = []
    for offset in (0, 4, 8):
        r = client.post("/v1/pools/v/select", json={"query": {"item_id": "v0100"}, "strategy": "topk", "k": 4, "offset": offset})
        ids = [d["id"] for d in r.json()["demonstrations"]]
        assert not set(ids) & set(seen)
        seen += ids
    assert len(seen) == 12


def test_batch_with_one_shared_demonstration_set(client: TestClient, pool) -> None:
    V, labels = pool
    queries = [{"item_id": "v0001"}, {"item_id": "v0002"}, {"embedding": V[3].tolist()}]
    r = client.post("/v1/pools/v/select/batch", json={"queries": queries, "strategy": "balanced", "k_per_class": 2,
                                                      "shared": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["shared"] is True and len(body["results"]) == 3
    sets = [[d["id"] for d in res["demonstrations"]] for res in body["results"]]
    assert sets[0] == sets[1] == sets[2] and len(sets[0]) == 8
    assert not {"v0001", "v0002"} & set(sets[0])
    stored = np.asarray(client.app.state.services.snapshots.snapshot("v").vectors)
    mean = stored[1] + stored[2] + (V[3] / np.linalg.norm(V[3]))
    mean /= np.linalg.norm(mean)
    allowed = np.ones(len(V), bool)
    allowed[[1, 2]] = False
    assert ranked(body["results"][0]) == oracle_balanced(stored, labels, mean, k_per_class=2, allowed=allowed)
    unshared = client.post("/v1/pools/v/select/batch", json={"queries": queries, "strategy": "balanced", "k": 4}).json()
    assert unshared["shared"] is False
