"""The rerank stage (RagLLaVA) through the real app, judged by the scripted model server (a real
process, model ``judge``): the order is the judge's, computed here from the same rule."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from exemplar.app import Settings, create_app
from tests.processes import free_port
from tests.unit.app.envelopes import envelope

WORDS = ["red", "blue", "green", "round", "square", "small", "large", "striped", "dotted", "shiny"]
QUERY_TEXT = "red round small shiny"
N = 24


def endpoint(base: str, model: str, **extra) -> dict:
    return {"base_url": f"{base}/v1", "model": model, "backoff_s": 0.01, **extra}


@pytest.fixture
def rerank_client(tmp_path, fake_mllm: str) -> Iterator[TestClient]:
    httpx.post(f"{fake_mllm}/reset", timeout=5)
    settings = Settings(data_dir=tmp_path / "data", refresh_s=0.0, mllm_endpoints={
        "judge": endpoint(fake_mllm, "judge", judge_concurrency=3),
        "majority": endpoint(fake_mllm, "majority"),
        "down": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "x", "max_retries": 0, "timeout_s": 2},
    })
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def judge_p(query: str, candidate: str) -> float:
    """The scripted judge's P(Yes), restated: word-set Jaccard, 3 places, within [0.01, 0.99]."""
    q, c = set(query.lower().split()), set(candidate.lower().split())
    return min(max(round(len(q & c) / len(q | c), 3) if q | c else 0.0, 0.01), 0.99)


@pytest.fixture
def pool(rerank_client: TestClient) -> dict[str, dict]:
    """Item ``q`` (the query) and c00..c23, similar to it in that order; labels A/B/C in turn; texts
    random over WORDS, so the judge's order is not the similarity's."""
    rng = np.random.default_rng(11)
    dim = 16
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    other = rng.normal(size=dim)
    other -= other @ direction * direction
    other /= np.linalg.norm(other)
    items = {"q": {"id": "q", "label": "A", "text": QUERY_TEXT, "embedding": direction.tolist()}}
    for i in range(N):
        angle = 0.05 + 0.05 * i
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 5)), replace=False))
        items[f"c{i:02d}"] = {"id": f"c{i:02d}", "label": "ABC"[i % 3], "text": text,
                              "embedding": (np.cos(angle) * direction + np.sin(angle) * other).tolist()}
    rerank_client.post("/v1/pools", json={"name": "p", "encoder": "precomputed:16"})
    assert rerank_client.post("/v1/pools/p/items", json={"items": list(items.values())}).status_code == 201
    return items


def judged_order(items: dict[str, dict], candidates: list[str]) -> list[tuple[str, float]]:
    """Best judged first; ties in similarity order (the candidates' order)."""
    scored = [(i, judge_p(QUERY_TEXT, items[i]["text"])) for i in candidates]
    return sorted(scored, key=lambda pair: -pair[1])


def by_rank(body: dict) -> list[dict]:
    return sorted(body["demonstrations"], key=lambda d: d["rank"])


def judge_calls(fake_mllm: str) -> int:
    return sum(r["model"] == "judge" for r in httpx.get(f"{fake_mllm}/requests", timeout=5).json())


SIMILAR = [f"c{i:02d}" for i in range(N)]


def test_order_is_the_judges(rerank_client, pool, fake_mllm) -> None:
    r = rerank_client.post("/v1/pools/p/select", json={"query": {"item_id": "q"}, "k": 10,
                                                        "rerank": {"mllm": "judge", "retrieve_k": 12}})
    assert r.status_code == 200, r.text
    expected = judged_order(pool, SIMILAR[:12])
    assert [e[0] for e in expected] != SIMILAR[:10], "the fixture must make the judge disagree with similarity"
    shown = by_rank(r.json())
    assert [d["id"] for d in shown] == [e[0] for e in expected[:10]]
    assert [d["judge_score"] for d in shown] == pytest.approx([e[1] for e in expected[:10]], abs=1e-9)
    assert [d["rank"] for d in shown] == list(range(10))
    assert all(d["score"] is not None and 0 < d["score"] <= 1 for d in shown), "the similarity stays beside it"
    assert judge_calls(fake_mllm) == 12
    # The judge saw the query first, then one candidate, then the question.
    (request, *_) = httpx.get(f"{fake_mllm}/requests", timeout=5).json()
    assert request["roles"] == ["user"] and request["query"]["texts"][0] == f"Query: {QUERY_TEXT}"
    assert request["query"]["texts"][1].startswith("Candidate: ")
    assert request["query"]["texts"][2] == "Is this example relevant to the query? Answer Yes or No."
    assert request["top_logprobs"] == 5 and request["logprobs"] is True


def test_top_n_min_score_and_window(rerank_client, pool) -> None:
    expected = judged_order(pool, SIMILAR[:16])
    r = rerank_client.post("/v1/pools/p/select", json={"query": {"item_id": "q"}, "k": 10,
                                                        "rerank": {"mllm": "judge", "top_n": 4}})
    assert [d["id"] for d in by_rank(r.json())] == [e[0] for e in expected[:4]]
    threshold = sorted({p for _, p in expected})[-3]  # the third-best score: some pass, some not
    r = rerank_client.post("/v1/pools/p/select", json={"query": {"item_id": "q"}, "k": 16,
                                                        "rerank": {"mllm": "judge", "min_score": threshold}})
    kept = [e[0] for e in expected if e[1] >= threshold]
    assert 0 < len(kept) < 16
    assert [d["id"] for d in by_rank(r.json())] == kept
    paged = rerank_client.post("/v1/pools/p/select", json={"query": {"item_id": "q"}, "k": 3, "offset": 2,
                                                            "rerank": {"mllm": "judge"}}).json()
    assert [d["id"] for d in by_rank(paged)] == [e[0] for e in expected[2:5]]
    assert [d["rank"] for d in by_rank(paged)] == [2, 3, 4]


def test_scores_are_cached(rerank_client, pool, fake_mllm) -> None:
    body = {"query": {"item_id": "q"}, "k": 5, "rerank": {"mllm": "judge", "retrieve_k": 8}}
    first = rerank_client.post("/v1/pools/p/select", json=body).json()
    assert judge_calls(fake_mllm) == 8
    again = rerank_client.post("/v1/pools/p/select", json=body).json()
    assert judge_calls(fake_mllm) == 8, "a query asked again costs no calls"
    assert again["demonstrations"] == first["demonstrations"]
    deeper = dict(body, rerank={"mllm": "judge", "retrieve_k": 10})
    rerank_client.post("/v1/pools/p/select", json=deeper)
    assert judge_calls(fake_mllm) == 10, "only the two new candidates are judged"
    asked = dict(body, rerank={"mllm": "judge", "retrieve_k": 8, "question": "Does it help? Answer Yes or No."})
    rerank_client.post("/v1/pools/p/select", json=asked)
    assert judge_calls(fake_mllm) == 18, "another question is another judgement"


def test_quotas_stay_exact_within_classes(rerank_client, pool) -> None:
    r = rerank_client.post("/v1/pools/p/select", json={"query": {"item_id": "q"}, "strategy": "balanced",
                                                        "k_per_class": 2,
                                                        "rerank": {"mllm": "judge", "retrieve_k": 4}})
    assert r.status_code == 200, r.text
    shown = by_rank(r.json())
    for label in "ABC":
        in_class = [i for i in SIMILAR if pool[i]["label"] == label][:4]
        expected = [e[0] for e in judged_order(pool, in_class)[:2]]
        assert [d["id"] for d in shown if d["label"] == label] == expected, label
    assert r.json()["shortfall"] == {}


def test_batch_and_infer(rerank_client, pool, fake_mllm) -> None:
    rerank = {"mllm": "judge", "retrieve_k": 6}
    one = rerank_client.post("/v1/pools/p/select", json={"query": {"item_id": "q"}, "k": 4, "rerank": rerank}).json()
    other = rerank_client.post("/v1/pools/p/select", json={"query": {"item_id": "c05"}, "k": 4,
                                                            "rerank": rerank}).json()
    batch = rerank_client.post("/v1/pools/p/select/batch", json={
        "queries": [{"item_id": "q"}, {"item_id": "c05"}], "k": 4, "rerank": rerank})
    assert batch.status_code == 200, batch.text
    assert [r["demonstrations"] for r in batch.json()["results"]] == [one["demonstrations"], other["demonstrations"]]
    shared = rerank_client.post("/v1/pools/p/select/batch", json={
        "queries": [{"item_id": "q"}, {"item_id": "c05"}], "k": 4, "shared": True, "rerank": rerank})
    envelope(shared, 409, "incompatible", "rerank")
    infer = rerank_client.post("/v1/pools/p/infer", json={"query": {"item_id": "q"}, "mllm": "majority",
                                                           "window": 4, "max_rounds": 1, "rerank": rerank})
    assert infer.status_code == 200, infer.text
    # The window is the judge's, and so is its layout: 'order' (most similar first) follows the pipeline's rank.
    assert [d["id"] for d in infer.json()["rounds"][0]["demonstrations"]] == [d["id"] for d in one["demonstrations"]]
    assert [d["rank"] for d in one["demonstrations"]] == [0, 1, 2, 3]
    assert [d["id"] for d in one["demonstrations"]] != [d["id"] for d in sorted(one["demonstrations"], key=lambda d: -d["score"])]


@pytest.mark.parametrize("order", ["most_similar_first", "most_similar_last", "class_grouped"])
def test_order_lays_the_window_out_by_the_judges_rank(rerank_client, pool, order) -> None:
    r = rerank_client.post("/v1/pools/p/select", json={"query": {"item_id": "q"}, "k": 8, "order": order,
                                                        "rerank": {"mllm": "judge", "retrieve_k": 12}})
    assert r.status_code == 200, r.text
    judged = [i for i, _ in judged_order(pool, SIMILAR[:12])[:8]]
    by_similarity = [d["id"] for d in sorted(r.json()["demonstrations"], key=lambda d: -d["score"])]
    assert by_similarity != judged, "the fixture must make the judge disagree with similarity"
    laid_out = [d["id"] for d in r.json()["demonstrations"]]
    if order == "most_similar_first":
        assert laid_out == judged
    elif order == "most_similar_last":
        assert laid_out == judged[::-1] and laid_out[-1] == judged[0], "the judge's best sits nearest the query"
    else:
        classes = list(dict.fromkeys(pool[i]["label"] for i in judged))  # in order of their best-judged item
        assert laid_out == [i for label in classes for i in judged if pool[i]["label"] == label]


def test_the_prompt_puts_the_judges_best_last(rerank_client, pool, fake_mllm) -> None:
    r = rerank_client.post("/v1/pools/p/infer", json={
        "query": {"item_id": "q"}, "mllm": "majority", "window": 6, "max_rounds": 1, "order": "most_similar_last",
        "prompt": {"answer": "{id}"}, "rerank": {"mllm": "judge", "retrieve_k": 12}})
    assert r.status_code == 200, r.text
    judged = [i for i, _ in judged_order(pool, SIMILAR[:12])[:6]]
    (asked,) = [x for x in httpx.get(f"{fake_mllm}/requests", timeout=5).json() if x["model"] == "majority"]
    assert asked["labels"] == judged[::-1], "the model saw the judge's order, its best last"
    assert judged[0] != SIMILAR[0], "the most similar item is not the judge's best here"


def test_chat_reports_the_judge(rerank_client, pool) -> None:
    r = rerank_client.post("/v1/chat/completions", json={
        "model": "majority", "messages": [{"role": "user", "content": "what is it?"}],
        "exemplar": {"pool": "p", "query": {"item_id": "q"}, "k": 3, "rerank": {"mllm": "judge"}}})
    assert r.status_code == 200, r.text
    expected = judged_order(pool, SIMILAR[:16])[:3]
    shown = sorted(r.json()["exemplar"]["demonstrations"], key=lambda d: d["rank"])
    assert [(d["id"], round(d["judge_score"], 6)) for d in shown] == [(i, round(p, 6)) for i, p in expected]


@pytest.mark.parametrize(("rerank", "query", "status", "type_", "param"), [
    ({"mllm": "nope"}, {"item_id": "q"}, 404, "not_found", "rerank.mllm"),
    ({"mllm": "judge", "retrieve_k": 0}, {"item_id": "q"}, 400, "invalid_request", "rerank.retrieve_k"),
    ({"mllm": "judge", "min_score": 1.5}, {"item_id": "q"}, 400, "invalid_request", "rerank.min_score"),
    ({"retrieve_k": 4}, {"item_id": "q"}, 400, "invalid_request", "rerank.mllm"),
    ({"mllm": "judge"}, {"embedding": [1.0] + [0.0] * 15}, 409, "incompatible", "rerank"),
    ({"mllm": "down"}, {"item_id": "q"}, 502, "mllm_error", None),
])
def test_refusals(rerank_client, pool, rerank, query, status, type_, param) -> None:
    r = rerank_client.post("/v1/pools/p/select", json={"query": query, "k": 4, "rerank": rerank})
    envelope(r, status, type_, param)


def test_without_rerank_nothing_changes(rerank_client, pool, fake_mllm) -> None:
    body = rerank_client.post("/v1/pools/p/select", json={"query": {"item_id": "q"}, "k": 4}).json()
    assert [d["id"] for d in by_rank(body)] == SIMILAR[:4]
    assert all(d["judge_score"] is None for d in body["demonstrations"]) and judge_calls(fake_mllm) == 0
