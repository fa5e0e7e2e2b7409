"""Checks shared by the bad-input tests: the error envelope, and the pools' state before and after."""

from __future__ import annotations

from fastapi.testclient import TestClient

__all__ = ["SEEDED_POOLS", "envelope", "pool_states"]

SEEDED_POOLS = ("vec", "img", "empty")  # what the ``seeded_pools`` fixture creates


def envelope(r, status: int, type_: str, param: str | None = "any") -> dict:  # noqa: ANN001 - an httpx response
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "param"}
    assert body["error"]["type"] == type_, body
    assert body["error"]["message"]
    if param != "any":
        assert body["error"]["param"] == param, body
    assert r.headers["x-request-id"]
    return body["error"]


def pool_states(client: TestClient) -> list:
    return [client.get(f"/v1/pools/{p}").json() for p in SEEDED_POOLS]
