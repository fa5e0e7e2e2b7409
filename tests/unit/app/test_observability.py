"""Metrics, recent statistics, item images and structured logs."""

from __future__ import annotations

import json
import logging

import numpy as np
from fastapi.testclient import TestClient

from exemplar.app.context import REQUEST_ID
from exemplar.app.observability import JsonFormatter
from tests.helpers import png_b64


def test_metrics_cover_requests_strategies_search_pools_and_jobs(client: TestClient) -> None:
    client.post("/v1/pools", json={"name": "p", "encoder": "precomputed:2"})
    client.post("/v1/pools/p/items", json={"items": [{"id": f"i{i}", "label": f"c{i % 2}", "embedding": [1, i]} for i in range(6)]})
    for strategy in ("topk", "balanced", "topk"):
        assert client.post("/v1/pools/p/select", json={"query": {"item_id": "i1"}, "strategy": strategy, "k": 2}).status_code == 200
    client.post("/v1/pools/p/select", json={"query": {"item_id": "nope"}})
    text = client.get("/metrics").text
    assert 'exemplar_http_requests_total{method="POST",route="/v1/pools/{pool}/select",status="200"} 3.0' in text
    assert 'exemplar_http_requests_total{method="POST",route="/v1/pools/{pool}/select",status="404"} 1.0' in text
    assert 'exemplar_select_seconds_count{strategy="topk"} 2.0' in text
    assert 'exemplar_select_seconds_count{strategy="balanced"} 1.0' in text
    assert "exemplar_index_search_seconds_count 3.0" in text and "exemplar_encode_seconds_bucket" in text
    assert 'exemplar_pool_items{pool="p"} 6.0' in text
    assert 'exemplar_http_request_seconds_bucket{le="0.005",method="POST",route="/v1/pools/{pool}/select"}' in text


def test_metrics_show_segments_deletions_and_compactions(client: TestClient) -> None:
    from tests.helpers import wait_job

    client.post("/v1/pools", json={"name": "p", "encoder": "precomputed:2"})
    for i in range(3):
        client.post("/v1/pools/p/items", json={"items": [{"id": f"i{i}", "embedding": [1, i]}]})
    client.post("/v1/pools/p/items/delete", json={"ids": ["i0"]})
    text = client.get("/metrics").text
    assert 'exemplar_pool_segments{pool="p"} 2.0' in text  # s1 had only i0: dropped from the manifest
    assert 'exemplar_pool_deleted_rows{pool="p"} 0.0' in text
    job = wait_job(client, client.post("/v1/pools/p/compact").json()["id"])
    assert job["state"] == "succeeded" and job["kind"] == "compact"
    text = client.get("/metrics").text
    assert 'exemplar_compactions_total{state="succeeded"}' in text


def test_recent_stats_for_the_dashboard(client: TestClient) -> None:
    client.post("/v1/pools", json={"name": "p", "encoder": "precomputed:2"})
    client.post("/v1/pools/p/items", json={"items": [{"id": f"i{i}", "label": f"c{i % 3}", "embedding": [1, i]} for i in range(9)]})
    for _ in range(4):
        client.post("/v1/pools/p/select", json={"query": {"item_id": "i1"}, "strategy": "balanced", "k": 3})
    client.post("/v1/pools/p/select/batch", json={"queries": [{"item_id": "i2"}], "strategy": "topk", "k": 2})
    stats = client.get("/v1/admin/stats").json()
    assert stats["requests"] == 5 and stats["strategies"] == {"balanced": 4, "topk": 1}
    assert sum(stats["labels_returned"]["p"].values()) == 14
    assert stats["labels_returned"]["p"]["c0"] >= 4
    point = stats["latency"][-1]
    assert point["count"] == 5 and 0 < point["p50_ms"] <= point["p95_ms"]
    overview = client.get("/v1/admin/overview").json()
    assert overview["pools"] == 1 and overview["items"] == 9 and overview["auth"] is False
    spec = client.get("/openapi.json").json()
    assert "/v1/admin/stats" in spec["paths"] and "/metrics" in spec["paths"]


def test_replicas_lists_this_process_with_its_lease_and_what_it_serves(client: TestClient) -> None:
    import os

    client.post("/v1/pools", json={"name": "p", "encoder": "precomputed:2"})
    for i in range(2):  # two writes: two segments served
        client.post("/v1/pools/p/items", json={"items": [{"id": f"i{i}", "embedding": [1, i]}]})
    assert client.post("/v1/pools/p/select", json={"query": {"item_id": "i1"}, "k": 1}).status_code == 200
    out = client.get("/v1/admin/replicas").json()
    assert out["catalog"] == "sqlite" and len(out["replicas"]) == 1
    me = out["replicas"][0]
    assert me["id"] == out["answered_by"] and me["pid"] == os.getpid() and me["alive"] is True
    assert me["lease_until"] > me["heartbeat_at"] >= me["started_at"]


def test_item_images_for_thumbnails(client: TestClient) -> None:
    client.post("/v1/pools", json={"name": "img", "encoder": "open_clip:exemplar-tiny"})
    client.post("/v1/pools/img/items", json={"items": [{"id": "red", "label": "r", "image": png_b64()}]})
    r = client.get("/v1/pools/img/items/red/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    assert client.get("/v1/pools/img/items/blue/image").status_code == 404
    client.post("/v1/pools", json={"name": "vec", "encoder": "precomputed:2"})
    client.post("/v1/pools/vec/items", json={"items": [{"id": "a", "embedding": [1, 0]}]})
    assert client.get("/v1/pools/vec/items/a/image").status_code == 404


def test_json_logs_carry_the_request_id() -> None:
    record = logging.LogRecord("exemplar.access", logging.INFO, __file__, 1, "request", None, None)
    record.status = 200
    record.route = "/v1/pools"
    token = REQUEST_ID.set("req-42")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        REQUEST_ID.reset(token)
    assert line["request_id"] == "req-42" and line["status"] == 200 and line["route"] == "/v1/pools"
    assert line["level"] == "info" and np.isfinite(line["ts"])
