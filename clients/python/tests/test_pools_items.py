"""Pools, versions and items through the sync client against the real server."""

from __future__ import annotations

import pytest
from support import DIM, LABELS, fresh_name, vector_items

from exemplar_client import ConflictError, Exemplar, ItemIn, NotFoundError


def test_health_ready_info(client: Exemplar) -> None:
    assert client.health().status == "ok"
    ready = client.ready()
    assert ready.ready and ready.pools is not None and ready.pools >= 1
    info = client.info()
    assert info.name == "exemplar" and info.version


def test_pool_lifecycle_versions_and_rollback(client: Exemplar) -> None:
    name = fresh_name("life")
    created = client.create_pool(name=name, encoder=f"precomputed:{DIM}")
    try:
        assert (created.name, created.dim, created.current_version, created.size) == (name, DIM, None, 0)
        assert name in [p.name for p in client.list_pools()]
        with pytest.raises(ConflictError) as caught:
            client.create_pool({"name": name, "encoder": f"precomputed:{DIM}"})
        assert caught.value.status == 409

        items = vector_items(12)
        first = client.add_items(name, [ItemIn(**i) for i in items[:6]])  # as models...
        second = client.add_items(name, items[6:])  # ...or as dicts
        assert (first.added, second.added, second.size) == (6, 6, 12)
        assert second.version > first.version

        versions = client.list_versions(name)
        assert [v.version for v in versions if v.current] == [second.version]
        rolled_back = client.activate_version(name, first.version)
        assert (rolled_back.current_version, rolled_back.size) == (first.version, 6)
        client.activate_version(name, second.version)
        stats = client.get_pool(name)
        assert stats.size == 12 and set(stats.labels) == set(LABELS) and sum(stats.domains.values()) == 12
    finally:
        client.delete_pool(name)
    with pytest.raises(NotFoundError) as caught:
        client.get_pool(name)
    assert (caught.value.status, caught.value.type, caught.value.param) == (404, "not_found", "pool")


def test_items_get_list_page_and_delete(client: Exemplar, vector_pool: tuple[str, list[dict]]) -> None:
    name, items = vector_pool
    item = client.get_item(name, "v004")
    assert (item.id, item.label, item.text, item.metadata) == ("v004", items[4]["label"], "item 4", {"i": 4})

    page = client.list_items(name, limit=7)
    assert len(page.items) == 7 and page.matching == len(items) and page.next_cursor
    assert [i.id for i in client.iter_items(name, page_size=7)] == [i["id"] for i in items]
    bees = [i.id for i in client.iter_items(name, labels="bee", page_size=5)]
    assert bees == [i["id"] for i in items if i["label"] == "bee"]
    both = client.list_items(name, labels=["ant", "bee"], domains=["site-a"], limit=100)
    assert both.matching == sum(1 for i in items if i["label"] in ("ant", "bee") and i["domain"] == "site-a")
    assert both.next_cursor is None


def test_delete_one_and_many(client: Exemplar) -> None:
    name = fresh_name("del")
    client.create_pool(name=name, encoder=f"precomputed:{DIM}")
    try:
        client.add_items(name, vector_items(9))
        one = client.delete_item(name, "v000")
        assert one.deleted == ["v000"] and one.missing == []
        with pytest.raises(NotFoundError) as caught:
            client.delete_item(name, "v000")
        assert caught.value.param == "item_id"
        many = client.delete_items(name, ["v001", "v002", "nope"])
        assert sorted(many.deleted) == ["v001", "v002"] and many.missing == ["nope"]
        assert client.get_pool(name).size == 6
        with pytest.raises(NotFoundError):
            client.get_item(name, "v001")
    finally:
        client.delete_pool(name)


def test_item_errors_name_the_field(client: Exemplar, vector_pool: tuple[str, list[dict]]) -> None:
    name, _ = vector_pool
    with pytest.raises(ConflictError) as caught:
        client.add_items(name, [{"id": "short", "embedding": [1.0, 0.0, 0.0]}])
    assert (caught.value.status, caught.value.type, caught.value.param) == (409, "incompatible", "items[0].embedding")


def test_admin_overview_and_stats(client: Exemplar, vector_pool: tuple[str, list[dict]]) -> None:
    name, _ = vector_pool
    client.select(name, query={"item_id": "v000"}, k=2)
    overview = client.admin_overview()
    assert overview.pools >= 1 and overview.items >= 60
    stats = client.admin_stats(window_s=600, bucket_s=60)
    assert stats.window_s == 600 and stats.requests >= 1 and stats.strategies.get("topk", 0) >= 1
    replicas = client.admin_replicas()
    assert replicas.answered_by in {r.id for r in replicas.replicas if r.alive}
