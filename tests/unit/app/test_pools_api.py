"""Pools, items and versions through the real app."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from tests.helpers import png_b64


def vectors(n: int, dim: int = 8, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(n, dim)).round(6).tolist()


def test_pool_lifecycle(client: TestClient) -> None:
    r = client.post("/v1/pools", json={"name": "derm", "encoder": "precomputed:8"})
    assert r.status_code == 201, r.text
    assert r.json()["dim"] == 8 and r.json()["current_version"] is None and r.json()["size"] == 0
    items = [{"id": f"a{i}", "label": "nevus" if i % 2 else "melanoma", "domain": f"site-{i % 3}",
              "text": f"lesion {i}", "embedding": v, "metadata": {"i": i}} for i, v in enumerate(vectors(6))]
    r = client.post("/v1/pools/derm/items", json={"items": items})
    assert r.status_code == 201, r.text
    assert r.json() == {"pool": "derm", "version": 1, "added": 6, "size": 6}
    stats = client.get("/v1/pools/derm").json()
    assert stats["labels"] == {"melanoma": 3, "nevus": 3}
    assert stats["domains"] == {"site-0": 2, "site-1": 2, "site-2": 2}
    assert stats["versions"][0]["current"] is True and stats["adapter"] is None
    assert [p["name"] for p in client.get("/v1/pools").json()["pools"]] == ["derm"]
    assert client.delete("/v1/pools/derm").status_code == 204
    assert client.get("/v1/pools/derm").status_code == 404
    assert client.get("/v1/pools").json() == {"pools": []}


def test_image_pool_with_base64_and_data_uri(client: TestClient) -> None:
    assert client.post("/v1/pools", json={"name": "img", "encoder": "open_clip:exemplar-tiny"}).status_code == 201
    items = [
        {"id": "red", "label": "r", "image": png_b64((230, 20, 20))},
        {"id": "blue", "label": "b", "image": "data:image/png;base64," + png_b64((20, 20, 230))},
    ]
    assert client.post("/v1/pools/img/items", json={"items": items}).status_code == 201
    r = client.post("/v1/pools/img/select", json={"query": {"image": png_b64((220, 30, 30))}, "k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["encoder"] == "open_clip:exemplar-tiny" and body["version"] == 1
    assert [d["id"] for d in body["demonstrations"]][0] == "red"
    assert body["demonstrations"][0]["image"].endswith(".png")
    text = client.post("/v1/pools/img/select", json={"query": {"text": "a red square"}, "k": 1})
    assert text.status_code == 200 and len(text.json()["demonstrations"]) == 1


def test_default_encoder_is_used_when_none_is_given(client: TestClient) -> None:
    r = client.post("/v1/pools", json={"name": "d"})
    assert r.status_code == 201 and r.json()["encoder"] == "open_clip:exemplar-tiny"


def test_activate_rolls_back_and_forward(client: TestClient) -> None:
    client.post("/v1/pools", json={"name": "p", "encoder": "precomputed:8"})
    client.post("/v1/pools/p/items", json={"items": [{"id": "x", "embedding": vectors(1)[0]}]})
    client.post("/v1/pools/p/items", json={"items": [{"id": "y", "embedding": vectors(1, seed=1)[0]}]})
    query = {"query": {"embedding": vectors(1, seed=1)[0]}, "k": 5}
    assert {d["id"] for d in client.post("/v1/pools/p/select", json=query).json()["demonstrations"]} == {"x", "y"}
    r = client.post("/v1/pools/p/versions/1/activate")
    assert r.status_code == 200 and r.json()["current_version"] == 1
    after = client.post("/v1/pools/p/select", json=query).json()
    assert after["version"] == 1 and [d["id"] for d in after["demonstrations"]] == ["x"]
    assert client.post("/v1/pools/p/versions/2/activate").json()["current_version"] == 2
    r = client.post("/v1/pools/p/versions/9/activate")
    assert r.status_code == 404 and r.json()["error"]["param"] == "version"


def test_healthz_readyz_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "pools": 0}
    spec = client.get("/openapi.json").json()
    for path in ["/v1/pools", "/v1/pools/{pool}", "/v1/pools/{pool}/items", "/v1/pools/{pool}/select",
                 "/v1/pools/{pool}/select/batch", "/v1/pools/{pool}/versions/{version}/activate"]:
        assert path in spec["paths"], path
    assert "ErrorEnvelope" in spec["components"]["schemas"]


def test_the_app_refreshes_snapshots_while_it_runs(settings) -> None:  # noqa: ANN001
    """The server follows other processes' writes through the cache's refresher: started by the
    lifespan (after the pools are loaded), stopped when the app shuts down."""
    from exemplar.app import create_app

    app = create_app(settings)
    snapshots = app.state.services.snapshots
    assert not snapshots.refreshing
    with TestClient(app):
        assert snapshots.refreshing
    assert not snapshots.refreshing


def test_a_centred_pool_over_http(client: TestClient) -> None:
    created = client.post("/v1/pools", json={"name": "c", "encoder": "precomputed:4", "centre": True})
    assert created.status_code == 201 and created.json()["centre"] is True
    few = client.post("/v1/pools/c/items", json={"items": [{"id": "a", "label": "x", "embedding": [1, 0, 0, 0]}]})
    assert few.status_code == 409 and few.json()["error"]["param"] == "items"
    rng = np.random.default_rng(0)
    items = [{"id": f"i{n}", "label": "xy"[n % 2], "embedding": (rng.normal(size=4) + [3, 0, 0, 0]).tolist()}
             for n in range(40)]
    assert client.post("/v1/pools/c/items", json={"items": items}).status_code == 201
    assert client.get("/v1/pools/c").json()["centre"] is True
    assert client.get("/v1/pools").json()["pools"][0]["centre"] is True
    plain = client.post("/v1/pools", json={"name": "p", "encoder": "precomputed:4"}).json()
    assert plain["centre"] is False
    bad = client.post("/v1/pools", json={"name": "q", "encoder": "precomputed:4", "centre": "yes"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "centre"
