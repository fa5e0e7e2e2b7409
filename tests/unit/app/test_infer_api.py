"""The VideoICL loop through the real app against the scripted model server (a real process)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from exemplar.app import Settings, create_app
from tests.helpers import png_b64
from tests.processes import free_port


def endpoint(base: str, model: str, **extra) -> dict:
    return {"base_url": f"{base}/v1", "model": model, "backoff_s": 0.01, **extra}


@pytest.fixture
def infer_client(tmp_path, fake_mllm: str, monkeypatch) -> Iterator[TestClient]:
    monkeypatch.setenv("FAKE_MLLM_KEY", "sekrit")
    httpx.post(f"{fake_mllm}/reset")
    settings = Settings(
        data_dir=tmp_path / "data",
        refresh_s=0.0,
        mllm_endpoints={
            "majority": endpoint(fake_mllm, "majority", api_key_env="FAKE_MLLM_KEY"),
            "never": endpoint(fake_mllm, "label:zebra"),
            "say-a": endpoint(fake_mllm, "label:A"),
            "slow": endpoint(fake_mllm, "slow:3", timeout_s=0.3, max_retries=1),
            "flaky": endpoint(fake_mllm, "flaky:2", max_retries=2),
            "very-flaky": endpoint(fake_mllm, "flaky:9", max_retries=2),
            "no-logprobs": endpoint(fake_mllm, "no-logprobs"),
            "malformed": endpoint(fake_mllm, "malformed", max_retries=0),
            "notjson": endpoint(fake_mllm, "notjson", max_retries=0),
            "refuse": endpoint(fake_mllm, "refuse", max_retries=3),
            "down": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "x", "max_retries": 1, "backoff_s": 0.01},
            "two-images": endpoint(fake_mllm, "majority", max_images=2),
        },
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def seen(fake_mllm: str) -> list[dict]:
    return httpx.get(f"{fake_mllm}/requests").json()


# Items ranked by similarity to the query item "q": a1 b1 | a2 a3 | b2 c1 | c2 c3 | b3 (labels A, B, C).
ORDER = [("a1", "A"), ("b1", "B"), ("a2", "A"), ("a3", "A"), ("b2", "B"), ("c1", "C"), ("c2", "C"), ("c3", "C"), ("b3", "B")]


@pytest.fixture
def ranked_pool(infer_client: TestClient) -> str:
    dim = 16
    rng = np.random.default_rng(0)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    other = rng.normal(size=dim)
    other -= other @ direction * direction
    other /= np.linalg.norm(other)
    items = [{"id": "q", "label": "A", "text": "the query", "embedding": direction.tolist()}]
    for rank, (item_id, label) in enumerate(ORDER):
        angle = 0.1 + 0.1 * rank
        vector = np.cos(angle) * direction + np.sin(angle) * other
        items.append({"id": item_id, "label": label, "text": f"item {item_id}", "embedding": vector.tolist()})
    infer_client.post("/v1/pools", json={"name": "ranked", "encoder": "precomputed:16"})
    assert infer_client.post("/v1/pools/ranked/items", json={"items": items}).status_code == 201
    return "ranked"


def infer(client: TestClient, mllm: str, **body) -> httpx.Response:
    return client.post("/v1/pools/ranked/infer", json={"query": {"item_id": "q"}, "mllm": mllm, **body})


def test_stops_at_the_first_confident_round(infer_client, ranked_pool, fake_mllm) -> None:
    r = infer(infer_client, "majority")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stopped"] == "confident" and body["chosen_round"] == 1
    assert body["answer"] == "A" and body["confidence"] == pytest.approx(1.0)
    assert [[d["id"] for d in x["demonstrations"]] for x in body["rounds"]] == [["a1", "b1"], ["a2", "a3"]]
    assert body["rounds"][0]["confidence"] == pytest.approx(0.5), "0.5 is not strictly above the threshold"
    requests = seen(fake_mllm)
    assert [x["labels"] for x in requests] == [["A", "B"], ["A", "A"]]
    assert requests[0]["logprobs"] is True and requests[0]["top_logprobs"] == 5
    assert requests[0]["authorization"] == "Bearer sekrit"
    assert requests[0]["query_text"] == "the query"
    assert body["timing_ms"]["overhead"] == pytest.approx(body["timing_ms"]["total"] - body["timing_ms"]["model"], abs=0.01)


def test_windows_advance_and_never_repeat(infer_client, ranked_pool, fake_mllm) -> None:
    body = infer(infer_client, "never", max_rounds=4).json()
    assert body["stopped"] == "max_rounds" and len(body["rounds"]) == 4
    assert [x["offset"] for x in body["rounds"]] == [0, 2, 4, 6]
    shown = [[d["id"] for d in x["demonstrations"]] for x in body["rounds"]]
    assert shown == [["a1", "b1"], ["a2", "a3"], ["b2", "c1"], ["c2", "c3"]]
    flat = [i for window in shown for i in window]
    assert len(flat) == len(set(flat)) and "q" not in flat
    assert [x["labels"] for x in seen(fake_mllm)] == [[dict(ORDER)[i] for i in w] for w in shown]


def test_best_of_rounds_when_none_passes(infer_client, ranked_pool) -> None:
    body = infer(infer_client, "majority", window=3, max_rounds=3, threshold=0.99).json()
    # windows: (a1 b1 a2) -> A 2/3; (a3 b2 c1) -> 1/3 each; (c2 c3 b3) -> C 2/3: the first best wins
    assert body["stopped"] == "max_rounds"
    assert [round(x["confidence"], 3) for x in body["rounds"]] == [0.667, 0.333, 0.667]
    assert body["chosen_round"] == 0 and body["answer"] == "A"


def test_stops_when_the_ranking_runs_out(infer_client, ranked_pool) -> None:
    body = infer(infer_client, "never", window=4, max_rounds=5).json()
    assert body["stopped"] == "exhausted" and [len(x["demonstrations"]) for x in body["rounds"]] == [4, 4, 1]


def test_offset_and_filters_apply_to_every_window(infer_client, ranked_pool) -> None:
    body = infer(infer_client, "never", labels=["C", "B"], offset=1, max_rounds=2).json()
    shown = [[d["id"] for d in x["demonstrations"]] for x in body["rounds"]]
    assert shown == [["b2", "c1"], ["c2", "c3"]]


@pytest.mark.parametrize("measure", ["min_token_prob", "mean_token_logprob", "first_token_prob", "label_prob"])
def test_every_confidence_measure(infer_client, ranked_pool, measure: str) -> None:
    body = infer(infer_client, "say-a", confidence=measure).json()
    assert body["stopped"] == "confident" and body["chosen_round"] == 1, measure


def test_timeouts_are_retried_then_reported(infer_client, ranked_pool, fake_mllm) -> None:
    r = infer(infer_client, "slow")
    assert r.status_code == 504 and r.json()["error"]["type"] == "mllm_timeout"
    assert len(seen(fake_mllm)) == 2


def test_retries_recover_from_transient_failures(infer_client, ranked_pool, fake_mllm) -> None:
    assert infer(infer_client, "flaky", max_rounds=1).status_code == 200
    assert len(seen(fake_mllm)) == 3
    r = infer(infer_client, "very-flaky", max_rounds=1)
    assert r.status_code == 502 and "HTTP 503" in r.json()["error"]["message"]


@pytest.mark.parametrize(("mllm", "message", "attempts"), [
    ("malformed", "without a chat completion", 1),
    ("notjson", "other than JSON", 1),
    ("refuse", "refused the request with HTTP 400", 1),
    ("no-logprobs", "no token logprobs", 1),
])
def test_unusable_answers_are_clear_errors(infer_client, ranked_pool, fake_mllm, mllm, message, attempts) -> None:
    r = infer(infer_client, mllm)
    assert r.status_code == 502 and r.json()["error"]["type"] == "mllm_error"
    assert message in r.json()["error"]["message"]
    assert len(seen(fake_mllm)) == attempts


def test_endpoint_down(infer_client, ranked_pool) -> None:
    r = infer(infer_client, "down")
    assert r.status_code == 502 and "cannot be reached" in r.json()["error"]["message"]


def test_unknown_endpoint_name_is_refused_before_anything_is_sent(infer_client, ranked_pool, fake_mllm) -> None:
    r = infer(infer_client, "gpt-99")
    # Which endpoints exist is the server's configuration, as which pools exist is its data.
    assert r.status_code == 404 and r.json()["error"] == {
        "type": "not_found", "param": "mllm", "message": r.json()["error"]["message"]}
    assert "'majority'" in r.json()["error"]["message"]
    assert seen(fake_mllm) == []
    r = infer_client.post("/v1/pools/ranked/infer", json={"query": {"item_id": "q"}, "mllm": "majority",
                                                         "base_url": "http://10.0.0.1/v1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "base_url", "URLs never come from requests"


@pytest.mark.parametrize(("body", "param"), [
    ({"window": -1}, "window"), ({"max_rounds": 0}, "max_rounds"), ({"windows": "sideways"}, "windows"),
    ({"demo_labels": "upside-down"}, "demo_labels"), ({"demo_labels": {"noise": 1.5}}, "demo_labels.noise"),
    ({"demo_labels": {"noise": 0.5, "p": 1}}, "demo_labels"), ({"demo_labels": {}}, "demo_labels"),
    ({"threshold": 1.5}, "threshold"),
    ({"confidence": "vibes"}, "confidence"), ({"strategy": "nope"}, "strategy"),
    ({"prompt": {"demo_text": "{text.__class__}"}}, "prompt.demo_text"),
    ({"query": {"embedding": [1.0] * 16}}, "query.embedding"),
])
def test_bad_infer_requests(infer_client, ranked_pool, fake_mllm, body, param) -> None:
    r = infer_client.post("/v1/pools/ranked/infer", json={"query": {"item_id": "q"}, "mllm": "majority", **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert seen(fake_mllm) == []


def test_images_go_to_the_model_as_data_uris(infer_client, fake_mllm) -> None:
    infer_client.post("/v1/pools", json={"name": "img", "encoder": "open_clip:exemplar-tiny"})
    items = [{"id": f"i{n}", "label": "red" if n % 2 else "blue", "text": f"square {n}",
              "image": png_b64((200 - 20 * n, 30, 20 * n))} for n in range(6)]
    assert infer_client.post("/v1/pools/img/items", json={"items": items}).status_code == 201
    body = {"query": {"image": png_b64((190, 30, 20)), "text": "what colour?"}, "mllm": "majority",
            "prompt": {"system": "Answer with one word.", "instruction": "Colour of the square?"}}
    r = infer_client.post("/v1/pools/img/infer", json=body)
    assert r.status_code == 200, r.text
    first = seen(fake_mllm)[0]
    assert first["images"] == 3, "two demonstrations and the query"
    assert first["query_text"] == "Colour of the square?\nwhat colour?"
    r = infer_client.post("/v1/pools/img/infer", json={**body, "mllm": "two-images"})
    assert r.status_code == 409 and r.json()["error"]["param"] == "window"
    r = infer_client.post("/v1/pools/img/infer", json={**body, "mllm": "two-images", "prompt": {"include_images": False}})
    assert r.status_code == 200 and seen(fake_mllm)[-1]["images"] == 0


def test_zero_shot_shows_the_model_no_demonstrations(infer_client, ranked_pool, fake_mllm) -> None:
    r = infer(infer_client, "majority", window=0, max_rounds=4, demo_labels="shuffled", prompt={"system": "Be brief."})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["zero_shot"] is True and body["stopped"] == "zero_shot"
    assert len(body["rounds"]) == 1 and body["rounds"][0]["demonstrations"] == [] and body["chosen_round"] == 0
    assert body["answer"] == "unknown", "the scripted model's answer without demonstrations"
    (request,) = seen(fake_mllm)
    assert request["labels"] == [] and request["roles"] == ["system", "user"] and request["query_text"] == "the query"
    assert infer(infer_client, "majority").json()["zero_shot"] is False


def shown(body: dict) -> list[list[str]]:
    return [[d["shown_label"] for d in x["demonstrations"]] for x in body["rounds"]]


def true_labels(body: dict) -> list[list[str]]:
    return [[d["label"] for d in x["demonstrations"]] for x in body["rounds"]]


def test_true_labels_are_shown_by_default(infer_client, ranked_pool, fake_mllm) -> None:
    body = infer(infer_client, "never", max_rounds=2).json()
    assert shown(body) == true_labels(body) == [["A", "B"], ["A", "A"]]


def test_shuffled_labels_reach_the_model_and_are_reported(infer_client, ranked_pool, fake_mllm) -> None:
    bodies = []
    for seed in range(4):
        httpx.post(f"{fake_mllm}/reset")
        body = infer(infer_client, "never", window=4, max_rounds=2, demo_labels="shuffled", seed=seed).json()
        assert [x["labels"] for x in seen(fake_mllm)] == shown(body), "the model sees what the response reports"
        assert true_labels(body) == [["A", "B", "A", "A"], ["B", "C", "C", "C"]], "'label' stays the true one"
        assert [sorted(w) for w in shown(body)] == [sorted(w) for w in true_labels(body)]
        bodies.append(body)
    again = infer(infer_client, "never", window=4, max_rounds=2, demo_labels="shuffled", seed=2).json()
    assert shown(again) == shown(bodies[2]), "seeded: the same request shows the same labels"
    assert any(shown(b) != true_labels(b) for b in bodies)
    assert len({str(shown(b)) for b in bodies}) > 1, "seeds differ"


def test_random_labels_come_from_the_label_filter(infer_client, ranked_pool, fake_mllm) -> None:
    body = infer(infer_client, "never", window=4, max_rounds=1, labels=["C", "B"], demo_labels="random", seed=1).json()
    assert {d["label"] for d in body["rounds"][0]["demonstrations"]} == {"B", "C"}
    drawn = shown(body)[0]
    assert set(drawn) <= {"B", "C"} and seen(fake_mllm)[-1]["labels"] == drawn
    body = infer(infer_client, "never", window=4, max_rounds=2, demo_labels="random", seed=1).json()
    assert {label for w in shown(body) for label in w} <= {"A", "B", "C"}


def test_full_label_noise_changes_every_label(infer_client, ranked_pool, fake_mllm) -> None:
    body = infer(infer_client, "never", window=3, max_rounds=3, demo_labels={"noise": 1}, seed=5).json()
    pairs = [(s, t) for ws, wt in zip(shown(body), true_labels(body)) for s, t in zip(ws, wt)]
    assert len(pairs) == 9 and all(s != t for s, t in pairs)
    assert [x["labels"] for x in seen(fake_mllm)] == shown(body)
    body = infer(infer_client, "never", window=3, max_rounds=2, demo_labels={"noise": 0.0}, seed=5).json()
    assert shown(body) == true_labels(body)


def test_shown_labels_follow_the_answer_template(infer_client, ranked_pool, fake_mllm) -> None:
    body = infer(infer_client, "never", max_rounds=1, demo_labels={"noise": 1}, prompt={"answer": "It is {label}."}).json()
    assert seen(fake_mllm)[-1]["labels"] == [f"It is {label}." for label in shown(body)[0]]


def test_repeat_first_shows_the_first_window_every_round(infer_client, ranked_pool, fake_mllm) -> None:
    body = infer(infer_client, "never", windows="repeat_first", max_rounds=3).json()
    assert body["stopped"] == "max_rounds" and len(body["rounds"]) == 3
    assert [[d["id"] for d in x["demonstrations"]] for x in body["rounds"]] == [["a1", "b1"]] * 3
    assert [x["offset"] for x in body["rounds"]] == [0, 0, 0]
    assert [x["labels"] for x in seen(fake_mllm)] == [["A", "B"]] * 3
    body = infer(infer_client, "never", windows="repeat_first", offset=2, max_rounds=2).json()
    assert [[d["id"] for d in x["demonstrations"]] for x in body["rounds"]] == [["a2", "a3"]] * 2


def test_repeat_first_with_shuffled_labels_reshuffles_each_round(infer_client, ranked_pool, fake_mllm) -> None:
    body = infer(infer_client, "never", windows="repeat_first", window=6, max_rounds=4, demo_labels="shuffled").json()
    assert len({tuple(d["id"] for d in x["demonstrations"]) for x in body["rounds"]}) == 1
    assert len({tuple(w) for w in shown(body)}) > 1, "the seed is seed + round"


def test_infer_selections_reach_the_dashboard_statistics(infer_client, ranked_pool) -> None:
    def stats() -> dict:
        return infer_client.get("/v1/admin/stats").json()

    before = stats()
    body = infer(infer_client, "majority").json()  # confident in round 1: a2, a3
    after = stats()
    assert after["strategies"].get("topk", 0) == before["strategies"].get("topk", 0) + 1
    chosen = [d["label"] for d in body["rounds"][body["chosen_round"]]["demonstrations"]]
    assert chosen == ["A", "A"]
    def returned(body: dict) -> dict[str, int]:
        return body["labels_returned"].get("ranked", {})

    # the chosen round's two demonstrations, not the first round's too
    assert sum(returned(after).values()) - sum(returned(before).values()) == 2
    assert returned(after)["A"] - returned(before).get("A", 0) == 2
    batch = infer_client.post("/v1/pools/ranked/infer/batch", json={
        "queries": [{"item_id": "q"}, {"item_id": "a1"}], "mllm": "majority", "strategy": "random",
        "k_per_class": 1, "shared": "fixed"})
    assert batch.status_code == 200, batch.text
    final = stats()
    assert final["strategies"].get("random", 0) == after["strategies"].get("random", 0) + 1
    assert sum(returned(final).values()) - sum(returned(after).values()) == len(batch.json()["demonstrations"]) == 3
