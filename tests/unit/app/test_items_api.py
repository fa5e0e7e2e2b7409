"""The items API: read one item, page through a pool, delete one or many."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.helpers import clustered_vectors
from tests.unit.app.envelopes import envelope


@pytest.fixture
def pool(client: TestClient) -> str:
    V, labels, domains = clustered_vectors(n=60, dim=8, n_labels=3, n_domains=2, seed=5)
    client.post("/v1/pools", json={"name": "p", "encoder": "precomputed:8"})
    items = [{"id": f"i{n:03d}", "label": labels[n], "domain": domains[n], "text": f"item {n}",
              "metadata": {"n": n}, "embedding": V[n].tolist()} for n in range(len(V))]
    assert client.post("/v1/pools/p/items", json={"items": items}).status_code == 201
    return "p"


def test_get_an_item(client: TestClient, pool: str) -> None:
    r = client.get(f"/v1/pools/{pool}/items/i007")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": "i007", "label": r.json()["label"], "text": "item 7", "image": None,
                        "domain": r.json()["domain"], "metadata": {"n": 7}}
    assert r.json()["label"].startswith("class-") and r.json()["domain"].startswith("domain-")
    envelope(client.get(f"/v1/pools/{pool}/items/nope"), 404, "not_found", "item_id")
    envelope(client.get("/v1/pools/ghost/items/i007"), 404, "not_found", "pool")


def test_pages_cover_every_matching_item_once(client: TestClient, pool: str) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(20):  # bounded: 60 items, pages of 7
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/v1/pools/{pool}/items", params=params).json()
        assert page["matching"] == 60 and page["version"] == 1
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"i{n:03d}" for n in range(60)]


def test_pages_filtered_by_label_and_domain(client: TestClient, pool: str) -> None:
    everything = client.get(f"/v1/pools/{pool}/items", params={"limit": 1000}).json()["items"]
    label, domain = everything[0]["label"], everything[0]["domain"]
    page = client.get(f"/v1/pools/{pool}/items", params={"label": label, "domain": domain, "limit": 1000}).json()
    want = [i["id"] for i in everything if i["label"] == label and i["domain"] == domain]
    assert [i["id"] for i in page["items"]] == want and page["matching"] == len(want) and page["next_cursor"] is None


def test_a_cursor_survives_writes_between_pages(client: TestClient, pool: str) -> None:
    first = client.get(f"/v1/pools/{pool}/items", params={"limit": 30}).json()
    client.post(f"/v1/pools/{pool}/items/delete", json={"ids": ["i040"]})
    client.post(f"/v1/pools/{pool}/items", json={"items": [{"id": "new", "embedding": [1.0] * 8}]})
    rest = client.get(f"/v1/pools/{pool}/items", params={"limit": 100, "cursor": first["next_cursor"]}).json()
    ids = [i["id"] for i in first["items"] + rest["items"]]
    assert ids == [f"i{n:03d}" for n in range(60) if n != 40] + ["new"]


@pytest.mark.parametrize("params,param", [({"limit": 0}, "limit"), ({"limit": 5000}, "limit"),
                                          ({"cursor": "not-a-cursor"}, "cursor")])
def test_bad_listing_parameters(client: TestClient, pool: str, params: dict, param: str) -> None:
    r = client.get(f"/v1/pools/{pool}/items", params=params)
    assert r.status_code == 400 and r.json()["error"]["param"] in (param, f"query.{param}"), r.text


def test_delete_one_item(client: TestClient, pool: str) -> None:
    r = client.delete(f"/v1/pools/{pool}/items/i003")
    assert r.status_code == 200 and r.json() == {"pool": pool, "version": 2, "deleted": ["i003"], "missing": []}
    envelope(client.get(f"/v1/pools/{pool}/items/i003"), 404, "not_found", "item_id")
    assert client.get(f"/v1/pools/{pool}").json()["size"] == 59
    picked = client.post(f"/v1/pools/{pool}/select", json={"query": {"item_id": "i004"}, "k": 59}).json()
    assert "i003" not in {d["id"] for d in picked["demonstrations"]} and len(picked["demonstrations"]) == 58
    envelope(client.delete(f"/v1/pools/{pool}/items/i003"), 404, "not_found", "item_id")
    # The version before the deletion still holds it: a rollback brings it back.
    assert client.post(f"/v1/pools/{pool}/versions/1/activate").status_code == 200
    assert client.get(f"/v1/pools/{pool}/items/i003").status_code == 200


def test_bulk_delete_reports_missing_ids(client: TestClient, pool: str) -> None:
    ids = ["i001", "ghost", "i002", "i001"]
    r = client.post(f"/v1/pools/{pool}/items/delete", json={"ids": ids})
    assert r.status_code == 200, r.text
    assert r.json() == {"pool": pool, "version": 2, "deleted": ["i001", "i002"], "missing": ["ghost"]}
    assert client.get(f"/v1/pools/{pool}").json()["size"] == 58
    # Nothing to delete: reported, and no new version is written.
    r = client.post(f"/v1/pools/{pool}/items/delete", json={"ids": ["ghost", "i001"]})
    assert r.json() == {"pool": pool, "version": 2, "deleted": [], "missing": ["ghost", "i001"]}
    assert [v["version"] for v in client.get(f"/v1/pools/{pool}").json()["versions"]] == [1, 2]
    envelope(client.post(f"/v1/pools/{pool}/items/delete", json={"ids": []}), 400, "invalid_request")


def test_deleting_every_item_leaves_an_empty_pool(client: TestClient, pool: str) -> None:
    r = client.post(f"/v1/pools/{pool}/items/delete", json={"ids": [f"i{n:03d}" for n in range(60)]})
    assert r.status_code == 200 and len(r.json()["deleted"]) == 60
    assert client.get(f"/v1/pools/{pool}").json()["size"] == 0
    assert client.get(f"/v1/pools/{pool}/items").json()["items"] == []
    envelope(client.post(f"/v1/pools/{pool}/select", json={"query": {"embedding": [1.0] * 8}}), 409, "empty_pool")
    assert client.post(f"/v1/pools/{pool}/items", json={"items": [{"id": "back", "embedding": [1.0] * 8}]}).status_code == 201
    assert client.get(f"/v1/pools/{pool}/items/back").status_code == 200
