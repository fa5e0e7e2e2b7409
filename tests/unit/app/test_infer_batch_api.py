"""infer/batch (ManyICL's many-query prompt) through the real app against the scripted model server."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from exemplar.app import Settings, create_app
from tests.processes import free_port

SHAPES = {"circle": "round", "square": "boxy", "triangle": "pointy"}


def endpoint(base: str, model: str, **extra) -> dict:
    return {"base_url": f"{base}/v1", "model": model, "backoff_s": 0.01, **extra}


@pytest.fixture
def client(tmp_path, fake_mllm: str) -> Iterator[TestClient]:
    httpx.post(f"{fake_mllm}/reset", timeout=10)
    settings = Settings(data_dir=tmp_path / "data", refresh_s=0.0, mllm_endpoints={
        "multi": endpoint(fake_mllm, "multi"),
        "multi-bad": endpoint(fake_mllm, "multi:bad=2"),
        "multi-skip": endpoint(fake_mllm, "multi:skip=1+3"),
        "refuse": endpoint(fake_mllm, "refuse", max_retries=0),
        "down": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "x", "max_retries": 0, "backoff_s": 0.01},
        "flaky": endpoint(fake_mllm, "flaky:1", max_retries=0),
    })
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        rng = np.random.default_rng(0)
        c.post("/v1/pools", json={"name": "shapes", "encoder": "precomputed:8"})
        items = [{"id": f"{label[0]}{i}", "label": label, "text": f"{word} {label[0]}{i}",
                  "embedding": rng.normal(size=8).tolist()} for label, word in SHAPES.items() for i in range(10)]
        assert c.post("/v1/pools/shapes/items", json={"items": items}).status_code == 201
        yield c


def seen(fake_mllm: str) -> list[dict]:
    return httpx.get(f"{fake_mllm}/requests", timeout=10).json()


# Queries are pool items: circles c0..c3, squares s0..s3, triangles t0..t3 (12 in all).
QUERIES = [f"{label[0]}{i}" for i in range(4) for label in SHAPES]
TRUTH = {f"{label[0]}{i}": label for label in SHAPES for i in range(10)}


def infer_batch(client: TestClient, mllm: str, queries: list[str] = QUERIES, **body) -> httpx.Response:
    return client.post("/v1/pools/shapes/infer/batch",
                       json={"queries": [{"item_id": q} for q in queries], "mllm": mllm, "k_per_class": 2, **body})


def test_answers_are_parsed_per_query_from_one_call(client, fake_mllm) -> None:
    r = infer_batch(client, "multi", QUERIES[:6], seed=3, prompt={"instruction": "Name the shape."})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["shared"] == "fixed" and body["strategy"] == "random"
    assert [a["answer"] for a in body["results"]] == [TRUTH[q] for q in QUERIES[:6]]
    assert [a["index"] for a in body["results"]] == list(range(6)) and body["failed"] == 0 and body["answered"] == 6
    demos = [d["id"] for d in body["demonstrations"]]
    assert Counter(d["label"] for d in body["demonstrations"]) == {"circle": 2, "square": 2, "triangle": 2}
    assert not set(demos) & set(QUERIES[:6]), "no query item among the demonstrations"
    (request,) = seen(fake_mllm)
    assert request["labels"] == [d["label"] for d in body["demonstrations"]], "the set, shown once"
    texts = request["query"]["texts"]
    assert [t.split(":")[0] for t in texts[:-1]] == [f"Query {n}" for n in range(1, 7)]
    assert texts[-1].startswith("Name the shape.\n") and "'<number>: <answer>'" in texts[-1]
    assert len(body["calls"]) == 1 and body["calls"][0]["queries"] == list(range(6))
    assert body["timing_ms"]["model"] == pytest.approx(body["calls"][0]["timing_ms"]["model"], abs=0.01)


def test_a_malformed_or_missing_line_fails_that_query_only(client, fake_mllm) -> None:
    body = infer_batch(client, "multi-bad", QUERIES[:4]).json()
    assert [a["answer"] for a in body["results"]] == [TRUTH[QUERIES[0]], None, TRUTH[QUERIES[2]], TRUTH[QUERIES[3]]]
    assert body["results"][1]["error"]["type"] == "unparseable" and body["failed"] == 1
    assert [a["error"] for i, a in enumerate(body["results"]) if i != 1] == [None] * 3
    body = infer_batch(client, "multi-skip", QUERIES[:4]).json()
    assert [a["error"]["type"] if a["error"] else a["answer"] for a in body["results"]] == [
        "missing", TRUTH[QUERIES[1]], "missing", TRUTH[QUERIES[3]]]


def test_more_queries_than_a_call_takes_make_several_calls(client, fake_mllm) -> None:
    body = infer_batch(client, "multi", queries_per_call=5, seed=1).json()
    assert [c["queries"] for c in body["calls"]] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert [a["call"] for a in body["results"]] == [0] * 5 + [1] * 5 + [2] * 2
    assert [a["answer"] for a in body["results"]] == [TRUTH[q] for q in QUERIES]
    requests = seen(fake_mllm)
    assert len(requests) == 3
    assert [len(x["query"]["texts"]) - 1 for x in requests] == [5, 5, 2], "numbered queries per call"
    assert all(x["labels"] == requests[0]["labels"] for x in requests), "every call shows the same set"
    assert [x["query"]["texts"][0].split(":")[0] for x in requests] == ["Query 1"] * 3, "numbered from 1 per call"


def test_the_fixed_set_is_the_select_batch_fixed_set(client) -> None:
    body = infer_batch(client, "multi", QUERIES[:3], seed=9, shuffle_seed=4).json()
    selected = client.post("/v1/pools/shapes/select/batch", json={
        "queries": [{"item_id": q} for q in QUERIES[:3]], "strategy": "random", "shared": "fixed",
        "k_per_class": 2, "seed": 9, "shuffle_seed": 4}).json()
    assert [d["id"] for d in body["demonstrations"]] == [d["id"] for d in selected["results"][0]["demonstrations"]]
    assert body["shuffle_seed"] == 4


def test_mean_set_uses_the_strategy(client) -> None:
    body = infer_batch(client, "multi", QUERIES[:3], shared="mean", strategy="balanced").json()
    assert body["shared"] == "mean" and body["strategy"] == "balanced" and len(body["demonstrations"]) == 6


def test_endpoint_failures(client, fake_mllm) -> None:
    r = infer_batch(client, "refuse", QUERIES[:3])
    assert r.status_code == 502 and r.json()["error"]["type"] == "mllm_error", "every call failed: the request fails"
    r = infer_batch(client, "down", QUERIES[:3])
    assert r.status_code == 502 and "cannot be reached" in r.json()["error"]["message"]
    # One call of two fails: its queries carry the endpoint's error, the other call's are answered
    # (the scripted 'flaky' answers in the single-query format, so its lines are missing).
    body = infer_batch(client, "flaky", QUERIES[:4], queries_per_call=2).json()
    assert [c["error"]["type"] if c["error"] else None for c in body["calls"]] == ["mllm_error", None]
    assert [a["error"]["type"] for a in body["results"]] == ["mllm_error", "mllm_error", "missing", "missing"]
    assert body["calls"][0]["text"] is None and body["calls"][1]["text"] is not None


@pytest.mark.parametrize(("body", "param"), [
    ({"queries_per_call": 0}, "queries_per_call"), ({"queries_per_call": 10_000}, "queries_per_call"),
    ({"queries": []}, "queries"), ({"queries": [{"embedding": [1.0] * 8}]}, "queries[0].embedding"),
    ({"queries": [{}]}, "queries[0]"),
    ({"strategy": "balanced"}, "strategy"), ({"shared": "sometimes"}, "shared"),
    ({"shared": "mean", "strategy": "balanced", "shuffle_seed": 1}, "shuffle_seed"),
    ({"max_tokens": 0}, "max_tokens"), ({"mllm": "gpt-99"}, "mllm"),
    ({"prompt": {"query_text": "{nope}"}}, "prompt.query_text"),
])
def test_bad_batch_requests(client, fake_mllm, body, param) -> None:
    request = {"queries": [{"item_id": "c0"}], "mllm": "multi", "k_per_class": 1, **body}
    r = client.post("/v1/pools/shapes/infer/batch", json=request)
    assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, r.text
    assert seen(fake_mllm) == []
