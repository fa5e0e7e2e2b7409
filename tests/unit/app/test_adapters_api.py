"""Adapter training jobs, invariant selection and jobs through the real app."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from exemplar.app import Settings, create_app
from exemplar.samples import domain_dominant_embeddings
from tests.helpers import wait_job


@pytest.fixture
def pool(client: TestClient) -> str:
    V, labels, domains = domain_dominant_embeddings(per_class_per_domain=15, dim=16, seed=2)
    client.post("/v1/pools", json={"name": "shift", "encoder": "precomputed:16"})
    items = [{"id": f"s{i:03d}", "label": labels[i], "domain": domains[i], "embedding": V[i].tolist()} for i in range(len(V))]
    assert client.post("/v1/pools/shift/items", json={"items": items}).status_code == 201
    return "shift"


def test_train_adapter_then_select_invariant(client: TestClient, pool: str, settings: Settings) -> None:
    r = client.post(f"/v1/pools/{pool}/select", json={"query": {"item_id": "s000"}, "strategy": "invariant"})
    assert r.status_code == 409 and r.json()["error"]["type"] == "adapter_missing"
    r = client.post(f"/v1/pools/{pool}/adapters", json={"epochs": 20, "head": "mlp"})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "adapter" and r.json()["state"] in ("queued", "running", "succeeded")
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "succeeded" and job["result"]["version"] == 1 and job["progress"]["done"] >= 1
    # A small pool is scanned exactly in the adapter space too: no segment gets an adapter index.
    assert job["result"]["index"]["segments"] == 1 and job["result"]["index"]["indexed"] == []
    assert job["progress"]["phase"] == "done" and job["progress"]["index_s"] >= 0
    stats = client.get(f"/v1/pools/{pool}").json()
    assert stats["adapter"]["version"] == 1 and stats["adapter"]["config"]["head"] == "mlp"
    body = {"query": {"item_id": "s000"}, "strategy": "invariant", "k_per_class": 1}
    r = client.post(f"/v1/pools/{pool}/select", json=body)
    assert r.status_code == 200 and r.json()["strategy"] == "invariant" and len(r.json()["demonstrations"]) == 6
    topk = client.post(f"/v1/pools/{pool}/select", json={**body, "invariant_base": "topk", "k_per_class": None, "k": 5})
    assert topk.status_code == 200 and len(topk.json()["demonstrations"]) == 5
    assert [j["id"] for j in client.get("/v1/jobs").json()["jobs"]] == [job["id"]]
    assert client.get("/v1/jobs", params={"pool": "other"}).json() == {"jobs": []}

    # A second app on the same data directory (as after a restart) loads the adapter from disk.
    with TestClient(create_app(settings), raise_server_exceptions=False) as restarted:
        again = restarted.post(f"/v1/pools/{pool}/select", json=body)
        assert again.status_code == 200
        assert [d["id"] for d in again.json()["demonstrations"]] == [d["id"] for d in r.json()["demonstrations"]]


@pytest.mark.parametrize(
    ("body", "param"),
    [({"head": "cnn"}, "head"), ({"epochs": 0}, "epochs"), ({"temperature": -1}, "temperature"),
     ({"colour": 1}, "colour"), ({"domain_loss": "mmd"}, "domain_loss")],
)
def test_bad_adapter_parameters_are_refused(client: TestClient, pool: str, body: dict, param: str) -> None:
    r = client.post(f"/v1/pools/{pool}/adapters", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert client.get("/v1/jobs").json() == {"jobs": []}


def test_adapter_errors(client: TestClient, pool: str) -> None:
    assert client.post("/v1/pools/nope/adapters", json={}).status_code == 404
    client.post("/v1/pools", json={"name": "flat", "encoder": "precomputed:2"})
    client.post("/v1/pools/flat/items", json={"items": [{"id": f"f{i}", "embedding": [1, i]} for i in range(10)]})
    r = client.post("/v1/pools/flat/adapters", json={})
    assert r.status_code == 409 and "2 classes" in r.json()["error"]["message"]
    assert client.get("/v1/jobs/nope").status_code == 404
    job = wait_job(client, client.post(f"/v1/pools/{pool}/adapters", json={"epochs": 2}).json()["id"])
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["type"] == "conflict"
    r = client.post(f"/v1/pools/{pool}/select", json={"query": {"item_id": "s001"}, "strategy": "invariant", "invariant_base": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "invariant_base"


def test_cancel_a_running_job(client: TestClient, pool: str) -> None:
    r = client.post(f"/v1/pools/{pool}/adapters", json={"epochs": 1000, "patience": 1000, "max_steps": 1000000})
    cancel = client.post(f"/v1/jobs/{r.json()['id']}/cancel")
    assert cancel.status_code == 200
    assert wait_job(client, r.json()["id"])["state"] == "cancelled"
    assert client.get(f"/v1/pools/{pool}").json()["adapter"] is None
