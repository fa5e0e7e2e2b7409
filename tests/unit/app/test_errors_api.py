"""Bad input gets a clear 4xx in the one error envelope, and changes nothing."""

from __future__ import annotations

import base64
import io
import json
import struct

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from PIL import Image

from exemplar.app import Settings, create_app
from tests.helpers import png_b64
from tests.unit.app.envelopes import envelope, pool_states


def big_png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("1", (1000, 1000)).save(buffer, format="PNG")  # 1 Mpx, over the 200 kpx test limit
    return base64.b64encode(buffer.getvalue()).decode()


def _f32(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


CASES = [
    # (method, path, body, status, type, param)
    ("post", "/v1/pools/nope/select", {"query": {"text": "x"}}, 404, "not_found", "pool"),
    ("post", "/v1/pools/nope/items", {"items": [{"id": "a"}]}, 404, "not_found", "pool"),
    ("post", "/v1/pools/img/select", {"query": {"image": "***not base64***"}}, 400, "invalid_request", "query.image"),
    ("post", "/v1/pools/img/select", {"query": {"image": base64.b64encode(b"plain text").decode()}}, 400, "invalid_image", "query.image"),
    ("post", "/v1/pools/img/select", {"query": {"image": png_b64()[:60]}}, 400, "invalid_image", "query.image"),
    ("post", "/v1/pools/img/select", {"query": {"image": big_png_b64()}}, 400, "invalid_image", "query.image"),
    ("post", "/v1/pools/img/items", {"items": [{"id": "z", "image": base64.b64encode(b"GIF89a junk").decode()}]}, 400, "invalid_image", "items[0].image"),
    ("post", "/v1/pools/img/items", {"items": [{"id": "z", "image": big_png_b64()}]}, 400, "invalid_image", "items[0].image"),
    ("post", "/v1/pools/img/items", {"items": [{"id": "z", "image": "%%%"}]}, 400, "invalid_request", "items[0].image"),
    # well formed, but not this pool's width: the refusal depends on the pool, so 409
    ("post", "/v1/pools/vec/select", {"query": {"embedding": [1, 2]}}, 409, "incompatible", "query.embedding"),
    ("post", "/v1/pools/vec/items", {"items": [{"id": "z", "embedding": [1, 2, 3]}]}, 409, "incompatible", "items[0].embedding"),
    ("post", "/v1/pools/vec/items", {"items": [{"id": "z", "embedding": [0, 0, 0, 0]}]}, 400, "invalid_request", "items[0].embedding"),
    ("post", "/v1/pools/vec/items", {"items": []}, 400, "invalid_request", "items"),
    ("post", "/v1/pools/vec/items", {"items": [{"id": "z", "embedding": [1, 0, 0, 0], "colour": "red"}]}, 400, "invalid_request", "items[0].colour"),
    ("post", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "k": 0}, 400, "invalid_request", "k"),
    ("post", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "k": 100_000}, 400, "invalid_request", "k"),
    ("post", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "offset": -1}, 400, "invalid_request", "offset"),
    ("post", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "strategy": "nearest"}, 400, "invalid_request", "strategy"),
    ("post", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "labels": ["z"]}, 409, "incompatible", "labels"),
    ("post", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "order": "sideways"}, 400, "invalid_request", "order"),
    ("post", "/v1/pools/vec/select", {"query": {"item_id": "ghost"}}, 404, "not_found", "query.item_id"),
    ("post", "/v1/pools/vec/select", {"query": {}}, 400, "invalid_request", "query"),
    # What the pool's encoder can embed is the pool's state, not the request's shape: 409.
    ("post", "/v1/pools/vec/select", {"query": {"text": "hi"}}, 409, "unsupported_query", "query.text"),
    ("post", "/v1/pools/vec/select/batch", {"queries": []}, 400, "invalid_request", "queries"),
    ("post", "/v1/pools/vec/select/batch", {"queries": [{}]}, 400, "invalid_request", "queries[0]"),
    ("post", "/v1/pools/vec/select", {}, 400, "invalid_request", "query"),
    ("post", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "k": "8"}, 400, "invalid_request", "k"),
    ("post", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "k": True}, 400, "invalid_request", "k"),
    ("post", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "seed": -1}, 400, "invalid_request", "seed"),
    ("post", "/v1/pools", {"name": "new", "encoder": "precomputed:4", "index": ""}, 400, "invalid_request", "index"),
    ("post", "/v1/pools", {"name": "new\n", "encoder": "precomputed:4"}, 400, "invalid_request", "name"),
    ("post", "/v1/pools/empty/select", {"query": {"embedding": [1, 0, 0, 0]}}, 409, "empty_pool", "pool"),
    ("post", "/v1/pools", {"name": "vec", "encoder": "precomputed:4"}, 409, "conflict", "name"),
    # a query vector as base64 float32 (embedding_b64): refused as the JSON list is, naming embedding_b64
    ("post", "/v1/pools/vec/select", {"query": {"embedding_b64": "***not base64***"}}, 400, "invalid_request", "query.embedding_b64"),
    ("post", "/v1/pools/vec/select", {"query": {"embedding_b64": "AACAPwAA"}}, 400, "invalid_request", "query.embedding_b64"),  # 6 bytes
    ("post", "/v1/pools/vec/select", {"query": {"embedding_b64": ""}}, 400, "invalid_request", "query.embedding_b64"),
    ("post", "/v1/pools/vec/select", {"query": {"embedding_b64": 7}}, 400, "invalid_request", "query.embedding_b64"),
    ("post", "/v1/pools/vec/select", {"query": {"embedding_b64": _f32(1, 2)}}, 409, "incompatible", "query.embedding_b64"),
    ("post", "/v1/pools/vec/select", {"query": {"embedding_b64": _f32(1, 0, 0, float("nan"))}}, 400, "invalid_request", "query.embedding_b64"),
    ("post", "/v1/pools/vec/select", {"query": {"embedding_b64": _f32(1, 0, float("inf"), 0)}}, 400, "invalid_request", "query.embedding_b64"),
    ("post", "/v1/pools/vec/select", {"query": {"embedding_b64": _f32(0, 0, 0, 0)}}, 400, "invalid_request", "query.embedding_b64"),
    ("post", "/v1/pools/vec/select", {"query": {"embedding_b64": _f32(1, 0, 0, 0), "embedding": [1, 0, 0, 0]}}, 400, "invalid_request", "query"),
    ("post", "/v1/pools/vec/select", {"query": {"embedding_b64": _f32(1, 0, 0, 0), "item_id": "a"}}, 400, "invalid_request", "query.embedding_b64"),
    ("post", "/v1/pools/vec/select/batch", {"queries": [{"embedding": [1, 0, 0, 0]}, {"embedding_b64": _f32(1, 2, 3)}]}, 409, "incompatible", "queries[1].embedding_b64"),
    ("post", "/v1/pools/vec/select/batch", {"queries": [{"embedding": [1, 0, 0, 0]}, {"embedding_b64": "AAA="}]}, 400, "invalid_request", "queries[1].embedding_b64"),
    ("post", "/v1/pools/vec/select/batch", {"queries": [{"embedding_b64": _f32(1, 0)}, {"embedding": [1, 2]}]}, 409, "incompatible", "queries[0].embedding_b64"),
    ("post", "/v1/pools", {"name": "x y", "encoder": "precomputed:4"}, 400, "invalid_request", "name"),
    ("post", "/v1/pools", {"name": "new", "encoder": "open_clip:ViT-B-32@laion2b_s34b_b79k"}, 503, "encoder_unavailable", None),
    ("post", "/v1/pools/vec/versions/7/activate", None, 404, "not_found", "version"),
    ("delete", "/v1/pools/nope", None, 404, "not_found", "pool"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "type_", "param"), CASES, ids=[f"{c[1]}-{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_a_clear_4xx_and_changes_nothing(client: TestClient, seeded_pools, method, path, body, status, type_, param) -> None:
    before = pool_states(client)
    r = client.request(method.upper(), path, json=body) if body is not None else client.request(method.upper(), path)
    envelope(r, status, type_, param)
    assert pool_states(client) == before
    assert [p["name"] for p in client.get("/v1/pools").json()["pools"]] == ["empty", "img", "vec"]


def test_nan_and_infinite_vectors(client: TestClient, seeded_pools) -> None:
    for value in ("NaN", "Infinity", "-Infinity"):
        raw = '{"query": {"embedding": [%s, 0, 0, 0]}}' % value
        r = client.post("/v1/pools/vec/select", content=raw, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["error"]["type"] in ("invalid_request", "invalid_json")
    raw = '{"items": [{"id": "n", "embedding": [NaN, 0, 0, 0]}]}'
    before = pool_states(client)
    r = client.post("/v1/pools/vec/items", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and pool_states(client) == before


def test_malformed_json_and_wrong_content_type(client: TestClient, seeded_pools) -> None:
    headers = {"content-type": "application/json"}
    envelope(client.post("/v1/pools/vec/select", content=b"{bad", headers=headers), 400, "invalid_json", None)
    envelope(client.post("/v1/pools/vec/select", content=b"[1, 2]", headers=headers), 400, "invalid_json", None)
    envelope(client.post("/v1/pools/vec/select", content=b"", headers=headers), 400, "invalid_json", None)
    envelope(client.post("/v1/pools/vec/select", content=b'{"query": {"item_id": "a"}}',
                         headers={"content-type": "text/plain"}), 415, "unsupported_media_type", None)


def test_oversized_body_is_refused(client: TestClient, seeded_pools) -> None:
    before = pool_states(client)
    huge = {"items": [{"id": f"i{i}", "embedding": [1.0, 0.0, 0.0, 0.0], "text": "x" * 1000} for i in range(400)]}
    envelope(client.post("/v1/pools/vec/items", json=huge), 413, "payload_too_large", None)

    def chunks():  # no content-length: the limit applies as the bytes arrive
        data = json.dumps(huge).encode()
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]

    r = client.post("/v1/pools/vec/items", content=chunks(), headers={"content-type": "application/json"})
    envelope(r, 413, "payload_too_large", None)
    assert pool_states(client) == before


def test_unknown_routes_and_methods_use_the_envelope(client: TestClient) -> None:
    envelope(client.get("/v2/nothing"), 404, "not_found", None)
    envelope(client.put("/v1/pools"), 405, "method_not_allowed", None)


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("TRACE", "/v1/pools", "GET, POST"),  # one route per method: Allow names them all
    ("PUT", "/v1/pools", "GET, POST"),
    ("TRACE", "/v1/pools/vec", "GET, DELETE"),
    ("PUT", "/v1/pools/vec/select", "POST"),
    ("TRACE", "/healthz", "GET"),
])
def test_a_method_the_path_does_not_serve_is_405_with_allow(client: TestClient, method: str, path: str,
                                                             allowed: str) -> None:
    r = client.request(method, path)
    envelope(r, 405, "method_not_allowed", None)
    assert r.headers["allow"] == allowed  # RFC 9110 15.5.6


def test_http_builds_are_forbidden_by_configuration_without_source_roots(client: TestClient, seeded_pools) -> None:
    before = pool_states(client)
    r = client.post("/v1/pools/vec/builds", json={"source": "/srv/manifest.jsonl"})
    error = envelope(r, 403, "not_permitted", None)
    assert "EXEMPLAR_SOURCE_ROOTS" in error["message"]
    assert client.get("/v1/jobs").json() == {"jobs": []} and pool_states(client) == before


def test_an_unknown_model_endpoint_is_404_naming_the_configured_ones(tmp_path) -> None:
    endpoint = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}  # never called
    settings = Settings(data_dir=tmp_path / "data", refresh_s=0.0, mllm_endpoints={"beta": endpoint, "alpha": endpoint})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.post("/v1/pools", json={"name": "vec", "encoder": "precomputed:4"})
        client.post("/v1/pools/vec/items", json={"items": [{"id": "a", "label": "x", "embedding": [1, 0, 0, 0]}]})
        r = client.post("/v1/pools/vec/infer", json={"query": {"item_id": "a"}, "mllm": "gamma"})
        error = envelope(r, 404, "not_found", "mllm")
        assert "'gamma'" in error["message"] and "'alpha', 'beta'" in error["message"]
        assert client.get("/openapi.json").json()["components"]["schemas"]["InferRequest"]["properties"]["mllm"][
            "examples"] == ["alpha", "beta"]


def test_without_model_endpoints_infer_is_404_and_says_none_are_configured(client: TestClient, seeded_pools) -> None:
    r = client.post("/v1/pools/vec/infer", json={"query": {"item_id": "a"}, "mllm": "qwen"})
    assert "none are configured" in envelope(r, 404, "not_found", "mllm")["message"]


# Bodies the document calls valid or not, each with the server's answer on the seeded pools: what a
# schema-driven client or fuzzer is told is what the server does (400 is the refusal of a malformed
# request; a valid one may still meet the pool's state, 404 or 409).
DOCUMENTED = [
    # (schema, path, body, valid)
    ("SelectRequest", "/v1/pools/vec/select", {"strategy": "random"}, True),
    ("SelectRequest", "/v1/pools/vec/select", {"strategy": "random", "query": {}}, True),
    ("SelectRequest", "/v1/pools/vec/select", {"strategy": "random", "query": {"item_id": "a"}, "k_per_class": 1}, True),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"item_id": "a"}}, True),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"embedding": [0, 1.5, 0, 0]}, "k": 1.0}, True),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "strategy": "balanced", "k": None,
                                               "k_per_class": 1}, True),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "k": 0, "k_per_class": 1,
                                               "strategy": "balanced"}, True),  # k is not used then
    ("SelectRequest", "/v1/pools/vec/select", {}, False),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {}}, False),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"item_id": "a", "embedding": [1, 0, 0, 0]}}, False),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"text": " \t"}}, False),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"embedding": [0, 0, 0, 0]}}, False),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"embedding": []}}, False),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "k_per_class": 1}, False),  # topk
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "strategy": "invariant",
                                               "invariant_base": "topk", "k_per_class": 1}, False),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "k": None}, False),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "k": 257}, False),  # this server's max_k
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "offset": 100_001}, False),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "strategy": "nearest"}, False),
    ("SelectRequest", "/v1/pools/vec/select", {"query": {"item_id": "a"}, "k": 2.5}, False),
    ("BatchSelectRequest", "/v1/pools/vec/select/batch", {"queries": [{}, {}], "strategy": "random"}, True),
    ("BatchSelectRequest", "/v1/pools/vec/select/batch", {"queries": [{"item_id": "a"}], "strategy": "random"}, True),
    ("BatchSelectRequest", "/v1/pools/vec/select/batch", {"queries": [{}]}, False),
    ("BatchSelectRequest", "/v1/pools/vec/select/batch", {"queries": [{}, {"item_id": "a"}], "strategy": "random"},
     False),
    ("BatchSelectRequest", "/v1/pools/vec/select/batch", {"queries": [{"item_id": "a"}] * 257}, False),
    ("PoolCreate", "/v1/pools", {"name": "p1", "encoder": "precomputed:16384", "index": "HNSW32"}, True),
    ("PoolCreate", "/v1/pools", {"name": "p2", "encoder": "precomputed:4", "index": "IVF16,SQ8"}, True),
    ("PoolCreate", "/v1/pools", {"name": "p3", "encoder": "precomputed:4", "index": ""}, False),
    ("PoolCreate", "/v1/pools", {"name": "p4", "encoder": "precomputed:16385"}, False),
    ("PoolCreate", "/v1/pools", {"name": "p5", "encoder": "precomputed:4", "embed": "audio"}, False),
    ("PoolCreate", "/v1/pools", {"name": "p6", "encoder": "clip"}, False),
    ("ItemsIn", "/v1/pools/vec/items", {"items": [{"id": "c", "label": "x", "embedding": [0, 0, 1, 0]}]}, True),
    ("ItemsIn", "/v1/pools/vec/items", {"items": [{"id": "c\n", "embedding": [0, 0, 1, 0]}]}, False),
    ("ItemsIn", "/v1/pools/vec/items", {"items": [{"id": "c", "label": "", "embedding": [0, 0, 1, 0]}]}, False),
    ("ItemsIn", "/v1/pools/vec/items", {"items": [{"id": "c", "image": ""}]}, False),
]


@pytest.mark.parametrize(("schema", "path", "body", "valid"), DOCUMENTED,
                         ids=[f"{c[0]}-{i}-{'valid' if c[3] else 'invalid'}" for i, c in enumerate(DOCUMENTED)])
def test_the_document_says_what_the_server_accepts(client: TestClient, seeded_pools, schema: str, path: str,
                                                   body: dict, valid: bool) -> None:
    document = client.get("/openapi.json").json()
    validator = Draft202012Validator({"$ref": f"#/components/schemas/{schema}", "components": document["components"]})
    assert validator.is_valid(body) is valid, list(validator.iter_errors(body))
    r = client.post(path, json=body)
    if valid:
        assert r.status_code in (200, 201), r.text
    else:
        envelope(r, 400, r.json()["error"]["type"])


def test_internal_errors_hide_details_and_carry_the_request_id(client: TestClient, seeded_pools, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("secret database path /srv/x")

    monkeypatch.setattr(client.app.state.services.selection, "select", boom)
    r = client.post("/v1/pools/vec/select", json={"query": {"item_id": "a"}}, headers={"x-request-id": "req-123"})
    error = envelope(r, 500, "internal_error", None)
    assert "secret" not in r.text and "req-123" in error["message"] and r.headers["x-request-id"] == "req-123"
