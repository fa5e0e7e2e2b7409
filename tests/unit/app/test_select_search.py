"""The request's ``search`` field: speed against recall, per request, through the real app."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from exemplar.app import Settings
from tests.helpers import clustered_vectors, oracle_balanced, oracle_topk
from tests.unit.app.envelopes import envelope


@pytest.fixture
def settings(tmp_path) -> Settings:  # noqa: ANN001 - one write of the whole pool: one segment, indexed
    return Settings(data_dir=tmp_path / "data", max_body_bytes=4 * 1024**2, max_items_per_request=4096, refresh_s=0.0)


@pytest.fixture
def ivf_pool(client: TestClient) -> tuple[np.ndarray, list[str]]:
    V, labels, domains = clustered_vectors(n=2_400, dim=16, n_labels=6, n_domains=2, seed=13)
    assert client.post("/v1/pools", json={"name": "w", "encoder": "precomputed:16", "index": "IVF32,SQ4"}).status_code == 201
    items = [{"id": f"w{i:04d}", "label": labels[i], "domain": domains[i], "embedding": V[i].tolist()} for i in range(len(V))]
    assert client.post("/v1/pools/w/items", json={"items": items}).status_code == 201
    snap = client.app.state.services.snapshots.snapshot("w")
    assert not snap.index.exact and snap.index.factory.startswith("IVF")  # approximate: exactness is asked for
    stored = np.asarray(snap.vectors)
    return stored, labels


def ranked(body: dict) -> list[int]:
    return [int(d["id"][1:]) for d in sorted(body["demonstrations"], key=lambda d: d["rank"])]


def test_recall_exact_answers_as_exact_search_on_an_approximate_index(client: TestClient, ivf_pool) -> None:
    V, labels = ivf_pool
    misses_tuned = 0
    for row in range(5, 2_400, 240):
        q = (V[row] + 0.3 * V[(row * 7) % 2_400]).tolist()  # between items: not trivially the item itself
        exact = client.post("/v1/pools/w/select", json={"query": {"embedding": q}, "strategy": "topk", "k": 10,
                                                        "search": {"recall": "exact"}})
        assert exact.status_code == 200, exact.text
        assert ranked(exact.json()) == oracle_topk(V, np.asarray(q, np.float32) / np.linalg.norm(q), k=10)
        fast = client.post("/v1/pools/w/select", json={"query": {"embedding": q}, "strategy": "topk", "k": 10,
                                                       "search": {"recall": "fast"}})
        assert fast.status_code == 200 and len(fast.json()["demonstrations"]) == 10
        tuned = client.post("/v1/pools/w/select", json={"query": {"embedding": q}, "strategy": "topk", "k": 10})
        misses_tuned += len(set(ranked(exact.json())) - set(ranked(tuned.json())))
        balanced = client.post("/v1/pools/w/select", json={"query": {"embedding": q}, "strategy": "balanced", "k": 4,
                                                           "search": {"recall": "exact"}})
        assert ranked(balanced.json()) == oracle_balanced(V, labels, np.asarray(q, np.float32) / np.linalg.norm(q), k=4)
    assert misses_tuned <= 10  # the tuned depth, for contrast: high recall, not a guarantee


def test_nprobe_applies_to_both_searches_and_batches(client: TestClient, ivf_pool) -> None:
    V, labels = ivf_pool
    queries = [{"embedding": V[i].tolist()} for i in (3, 300, 900)]
    for strategy in ("topk", "balanced"):
        r = client.post("/v1/pools/w/select/batch", json={"queries": queries, "strategy": strategy, "k": 6,
                                                          "search": {"nprobe": 32}})
        assert r.status_code == 200, r.text
        for q, result in zip(queries, r.json()["results"]):
            single = client.post("/v1/pools/w/select", json={"query": q, "strategy": strategy, "k": 6,
                                                               "search": {"nprobe": 32}}).json()
            assert ranked(result) == ranked(single)


@pytest.mark.parametrize(("search", "param"), [
    ({"recall": "exact", "nprobe": 4}, "search"),
    ({"recall": "slow"}, "search.recall"),
    ({"nprobe": 0}, "search.nprobe"),
    ({"nprobe": 8, "efSearch": 16}, "search.efSearch"),
])
def test_a_bad_search_field_is_refused_and_changes_nothing(client: TestClient, ivf_pool, search: dict, param: str) -> None:
    before = client.get("/v1/pools/w").json()
    r = client.post("/v1/pools/w/select", json={"query": {"item_id": "w0001"}, "search": search})
    error = envelope(r, 400, "invalid_request")
    assert error["param"].startswith(param)
    assert client.get("/v1/pools/w").json() == before
