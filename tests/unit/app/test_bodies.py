"""ValidatedBodyRoute: a body validated from its bytes by pydantic-core, every refusal as FastAPI's own."""

from __future__ import annotations

import json

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from exemplar.app.bodies import ValidatedBodyRoute
from exemplar.app.errors import install_error_handlers
from exemplar.app.schemas.select import BatchSelectRequest, SelectRequest

# Valid and refused bodies of every kind: JSON that is not an object, wrong types, unknown fields,
# strict-mode coercions, 8.0 for an integer, nested errors, bad base64, NaN literals, empty bodies.
BODIES = [
    b'{"query": {"embedding": [1, 0.5, 0, 0]}, "k": 3}',
    b'{"query": {"embedding": [1, 0.5, 0, 0]}, "k": 3.0, "seed": 2.0}',
    b'{"query": {"embedding_b64": "AACAPwAAAD8AAAAAAAAAAA=="}}',
    b'{"query": {"item_id": "a"}, "strategy": "balanced", "k_per_class": 2, "labels": ["x"]}',
    b'{"strategy": "random"}',
    b'{"query": {"text": "a cat", "image": "%%%"}}',
    b'{"query": {"embedding": ["1", 0, 0, 0]}}',
    b'{"query": {"embedding": [true, 0, 0, 0]}}',
    b'{"query": {"embedding": [NaN, 0, 0, 0]}}',
    b'{"query": {"embedding": [Infinity, 0, 0, 0]}}',
    b'{"query": {"embedding_b64": "AAA="}}',
    b'{"query": {"embedding_b64": 1}}',
    b'{"query": {"item_id": "a"}, "k": "8"}',
    b'{"query": {"item_id": "a"}, "k": 8.5}',
    b'{"query": {"item_id": "a"}, "colour": "red"}',
    b'{"query": {"item_id": "a", "colour": "red"}}',
    b'{"query": {"item_id": "a"}, "order": "sideways"}',
    b'{"query": 3}',
    b'{"query": {"item_id": "a"}, "k": 8, "k": 9}',
    b'[1, 2]',
    b'"text"',
    b'{bad',
    b'{"query": {"item_id": "\\ud800"}}',
    b'',
]


@pytest.fixture
def client() -> TestClient:
    """The same model behind a plain route and a ValidatedBodyRoute; each answers with what it got."""
    app = FastAPI()
    install_error_handlers(app)
    plain, fast = APIRouter(), APIRouter(route_class=ValidatedBodyRoute)

    @plain.post("/plain")
    @fast.post("/fast")
    def echo(body: SelectRequest) -> dict:
        return {"type": type(body).__name__, "body": body.model_dump(mode="json")}

    @fast.post("/fast/batch")
    def echo_batch(body: BatchSelectRequest) -> dict:
        return {"queries": len(body.queries)}

    app.include_router(plain)
    app.include_router(fast)
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("raw", BODIES, ids=range(len(BODIES)))
def test_a_validated_body_route_answers_as_a_plain_route(client: TestClient, raw: bytes) -> None:
    for content_type in ("application/json", "text/plain", None):
        headers = {"content-type": content_type} if content_type else {}
        want = client.post("/plain", content=raw, headers=headers)
        got = client.post("/fast", content=raw, headers=headers)
        assert (got.status_code, got.json()) == (want.status_code, want.json()), (raw, content_type)


def test_the_validated_body_is_not_parsed_twice(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:

    async def refuse(self: object) -> None:
        raise AssertionError("a valid body went through json.loads")

    monkeypatch.setattr("starlette.requests.Request.json", refuse)
    r = client.post("/fast", content=b'{"query": {"embedding": [1, 0, 0, 0]}, "k": 2.0}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["body"]["k"] == 2
    batch = {"queries": [{"embedding_b64": "AACAPwAAAAAAAAAAAAAAAA=="}, {"item_id": "a"}]}
    r = client.post("/fast/batch", content=json.dumps(batch), headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json() == {"queries": 2}


def test_the_body_stays_declared_in_the_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert paths["/fast"]["post"]["requestBody"] == paths["/plain"]["post"]["requestBody"]
    assert paths["/fast"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SelectRequest"}
