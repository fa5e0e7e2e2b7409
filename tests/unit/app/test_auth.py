"""API keys, scopes, rate limits and CORS through the real app."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

from exemplar.app import Settings, create_app
from exemplar.app.auth import ApiKeyConfig, Authenticator, hash_key

ADMIN_KEY = "admin-key-0123456789abcdef"
QUERY_KEY = "query-key-0123456789abcdef"
LIMITED_KEY = "limited-key-0123456789abcd"


@pytest.fixture
def secured(tmp_path):
    settings = Settings(
        data_dir=tmp_path / "data",
        api_keys=[
            {"name": "ops", "sha256": hash_key(ADMIN_KEY), "scopes": ["admin"]},
            {"name": "pipeline", "key": QUERY_KEY, "scopes": ["query"]},
            {"name": "slow", "sha256": hash_key(LIMITED_KEY), "scopes": ["query"], "rate_per_s": 0.5, "burst": 2},
        ],
        cors_origins=["https://ops.example"],
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        assert client.post("/v1/pools", json={"name": "p", "encoder": "precomputed:2"}, headers=admin).status_code == 201
        assert client.post("/v1/pools/p/items", headers=admin, json={"items": [
            {"id": "a", "label": "x", "embedding": [1, 0]}, {"id": "b", "label": "y", "embedding": [0, 1]}]}).status_code == 201
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


SELECT = {"query": {"embedding": [1, 0]}, "k": 1}


def test_requests_need_a_valid_key(secured: TestClient) -> None:
    for headers in ({}, bearer("wrong-key-0123456789abcdef"), {"authorization": "Basic abc"}):
        r = secured.post("/v1/pools/p/select", json=SELECT, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    assert secured.post("/v1/pools/p/select", json=SELECT, headers=bearer(QUERY_KEY)).status_code == 200
    assert secured.post("/v1/pools/p/select", json=SELECT, headers={"x-api-key": QUERY_KEY}).status_code == 200
    assert secured.get("/healthz").status_code == 200 and secured.get("/readyz").status_code == 200
    assert secured.get("/dashboard").status_code == 200, "the page is static; its data needs the admin key"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/pools", {"name": "q", "encoder": "precomputed:2"}),
    ("POST", "/v1/pools/p/items", {"items": [{"id": "c", "embedding": [1, 1]}]}),
    ("POST", "/v1/pools/p/versions/1/activate", None),
    ("DELETE", "/v1/pools/p", None),
    ("POST", "/v1/pools/p/adapters", {}),
    ("POST", "/v1/pools/p/builds", {"source": "/tmp/x.jsonl"}),
    ("GET", "/v1/jobs", None),
    ("GET", "/metrics", None),
    ("GET", "/v1/admin/stats", None),
    ("GET", "/v1/admin/overview", None),
    ("GET", "/v1/admin/replicas", None),
])
def test_writes_jobs_and_admin_data_need_the_admin_scope(secured: TestClient, method, path, body) -> None:
    r = secured.request(method, path, json=body, headers=bearer(QUERY_KEY))
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
    assert secured.get("/v1/pools/p", headers=bearer(ADMIN_KEY)).json()["size"] == 2, "nothing changed"


def test_admin_keys_can_also_query(secured: TestClient) -> None:
    assert secured.post("/v1/pools/p/select", json=SELECT, headers=bearer(ADMIN_KEY)).status_code == 200
    assert secured.get("/v1/pools", headers=bearer(QUERY_KEY)).status_code == 200


def test_rate_limits_answer_429_with_retry_after(secured: TestClient) -> None:
    statuses = [secured.post("/v1/pools/p/select", json=SELECT, headers=bearer(LIMITED_KEY)) for _ in range(4)]
    assert [r.status_code for r in statuses[:2]] == [200, 200]
    limited = statuses[2]
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 2
    assert secured.post("/v1/pools/p/select", json=SELECT, headers=bearer(QUERY_KEY)).status_code == 200, "per key"


def test_cors_only_for_configured_origins(secured: TestClient) -> None:
    allowed = secured.options("/v1/pools", headers={"origin": "https://ops.example", "access-control-request-method": "GET"})
    assert allowed.headers.get("access-control-allow-origin") == "https://ops.example"
    other = secured.options("/v1/pools", headers={"origin": "https://evil.example", "access-control-request-method": "GET"})
    assert "access-control-allow-origin" not in other.headers


def test_keys_are_kept_as_hashes_and_config_is_checked() -> None:
    auth = Authenticator([ApiKeyConfig(name="k", key="a-very-long-secret-key", scopes=["query"])])
    stored = [digest for _, digest in auth._keys]
    assert stored == [hashlib.sha256(b"a-very-long-secret-key").digest()]
    assert auth.authenticate("a-very-long-secret-key").scopes == frozenset({"query"})
    assert auth.authenticate("a-very-long-secret-kez") is None and auth.authenticate(None) is None
    with pytest.raises(ValueError, match="exactly one"):
        ApiKeyConfig(name="k", scopes=["query"])
    with pytest.raises(ValueError):
        ApiKeyConfig(name="k", key="short", scopes=["query"])


def test_without_keys_everything_is_open(client: TestClient) -> None:
    assert client.get("/v1/jobs").status_code == 200 and client.get("/metrics").status_code == 200
