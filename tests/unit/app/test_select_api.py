"""select and select/batch through the real app."""

from __future__ import annotations

import base64
from collections import Counter

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.helpers import clustered_vectors, oracle_balanced, oracle_topk


@pytest.fixture
def pool(client: TestClient) -> tuple[np.ndarray, list[str]]:
    V, labels, domains = clustered_vectors(n=300, dim=16, n_labels=4, n_domains=2, seed=11)
    client.post("/v1/pools", json={"name": "v", "encoder": "precomputed:16"})
    items = [{"id": f"v{i:04d}", "label": labels[i], "domain": domains[i], "embedding": V[i].tolist()} for i in range(len(V))]
    assert client.post("/v1/pools/v/items", json={"items": items}).status_code == 201
    return V, labels


def ranked(body: dict) -> list[int]:
    return [int(d["id"][1:]) for d in sorted(body["demonstrations"], key=lambda d: d["rank"])]


def test_select_matches_the_oracle_over_http(client: TestClient, pool) -> None:
    V, labels = pool
    q = V[17]
    stored = np.asarray(client.app.state.services.snapshots.snapshot("v").vectors)  # float32 as stored
    r = client.post("/v1/pools/v/select", json={"query": {"item_id": "v0017"}, "strategy": "balanced", "k_per_class": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert ranked(body) == oracle_balanced(stored, labels, stored[17], k_per_class=2, skip=17)
    assert Counter(d["label"] for d in body["demonstrations"]) == {lab: 2 for lab in set(labels)}
    assert set(body) == {"pool", "version", "encoder", "strategy", "demonstrations", "timing_ms", "shortfall"}
    assert body["shortfall"] == {}
    assert set(body["demonstrations"][0]) == {"id", "label", "text", "image", "domain", "score", "rank", "metadata", "judge_score"}
    r = client.post("/v1/pools/v/select", json={"query": {"embedding": q.tolist()}, "strategy": "topk", "k": 6, "offset": 3})
    assert ranked(r.json()) == oracle_topk(stored, stored[17], k=6, offset=3)


def test_batch_returns_one_result_per_query(client: TestClient, pool) -> None:
    queries = [{"item_id": "v0001"}, {"item_id": "v0002"}, {"embedding": pool[0][3].tolist()}]
    r = client.post("/v1/pools/v/select/batch", json={"queries": queries, "strategy": "balanced", "k": 4})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    for query, result in zip(queries, results):
        single = client.post("/v1/pools/v/select", json={"query": query, "strategy": "balanced", "k": 4}).json()
        assert ranked(result) == ranked(single)


def test_next_window_through_offset(client: TestClient, pool) -> None:
    seen: list[str] = []
    for offset in (0, 4, 8):
        r = client.post("/v1/pools/v/select", json={"query": {"item_id": "v0100"}, "strategy": "topk", "k": 4, "offset": offset})
        ids = [d["id"] for d in r.json()["demonstrations"]]
        assert not set(ids) & set(seen)
        seen += ids
    assert len(seen) == 12


def test_batch_with_one_shared_demonstration_set(client: TestClient, pool) -> None:
    V, labels = pool
    queries = [{"item_id": "v0001"}, {"item_id": "v0002"}, {"embedding": V[3].tolist()}]
    r = client.post("/v1/pools/v/select/batch", json={"queries": queries, "strategy": "balanced", "k_per_class": 2,
                                                      "shared": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["shared"] is True and len(body["results"]) == 3
    sets = [[d["id"] for d in res["demonstrations"]] for res in body["results"]]
    assert sets[0] == sets[1] == sets[2] and len(sets[0]) == 8
    assert not {"v0001", "v0002"} & set(sets[0])
    stored = np.asarray(client.app.state.services.snapshots.snapshot("v").vectors)
    mean = stored[1] + stored[2] + (V[3] / np.linalg.norm(V[3]))
    mean /= np.linalg.norm(mean)
    allowed = np.ones(len(V), bool)
    allowed[[1, 2]] = False
    assert ranked(body["results"][0]) == oracle_balanced(stored, labels, mean, k_per_class=2, allowed=allowed)
    unshared = client.post("/v1/pools/v/select/batch", json={"queries": queries, "strategy": "balanced", "k": 4}).json()
    assert unshared["shared"] is False


def b64(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()


def without_timing(body: dict) -> dict:
    results = body["results"] if "results" in body else [body]
    for result in results:
        result.pop("timing_ms")
    return body


@pytest.mark.parametrize("strategy", ["topk", "balanced"])
def test_embedding_b64_selects_what_the_same_vector_as_a_json_list_selects(client: TestClient, pool, strategy) -> None:
    V, _ = pool
    rng = np.random.default_rng(5)
    for q in (V[17], V[200] + 0.1 * rng.normal(size=V.shape[1])):
        q32 = np.asarray(q, np.float32)  # the JSON list carries the float32 values exactly
        options = {"strategy": strategy, "k": 6}
        as_list = client.post("/v1/pools/v/select", json={"query": {"embedding": q32.tolist()}, **options})
        as_b64 = client.post("/v1/pools/v/select", json={"query": {"embedding_b64": b64(q32)}, **options})
        assert as_list.status_code == as_b64.status_code == 200, as_b64.text
        assert without_timing(as_b64.json()) == without_timing(as_list.json())


def test_batch_takes_embedding_b64_and_json_lists_together(client: TestClient, pool) -> None:
    V, _ = pool
    Q = V[[3, 40, 41, 250]].astype(np.float32)
    mixed = [{"embedding_b64": b64(Q[0])}, {"embedding": Q[1].tolist()}, {"item_id": "v0005"},
             {"embedding_b64": b64(Q[2])}, {"embedding_b64": b64(Q[3])}]
    lists = [{"embedding": Q[0].tolist()}, {"embedding": Q[1].tolist()}, {"item_id": "v0005"},
             {"embedding": Q[2].tolist()}, {"embedding": Q[3].tolist()}]
    for shared in (False, True):
        body = {"strategy": "topk", "k": 5, "shared": shared}
        r = client.post("/v1/pools/v/select/batch", json={"queries": mixed, **body})
        want = client.post("/v1/pools/v/select/batch", json={"queries": lists, **body})
        assert r.status_code == want.status_code == 200, r.text
        assert without_timing(r.json()) == without_timing(want.json())
        assert len(r.json()["results"]) == 5


def test_responses_are_what_the_declared_models_write(client: TestClient, pool) -> None:
    """The routes write their responses from plain data: byte for byte the response models' JSON."""
    from exemplar.app.schemas.select import BatchSelectResponse, SelectResponse

    client.post("/v1/pools/v/items", json={"items": [
        {"id": "meta", "label": "extra", "text": "é ü \u2028", "domain": "d0", "metadata": {"a": [1, 2.5, None], "b": {"c": "x"}},
         "embedding": pool[0][0].tolist()}]})
    for body in ({"query": {"item_id": "v0017"}, "strategy": "balanced", "k_per_class": 2},
                 {"query": {"embedding": pool[0][0].tolist()}, "k": 4},
                 {"strategy": "random", "k": 3, "seed": 2},
                 {"query": {"item_id": "v0001"}, "strategy": "balanced", "k_per_class": 3, "labels": ["extra"],
                  "fill": False}):
        r = client.post("/v1/pools/v/select", json=body)
        assert r.status_code == 200, r.text
        assert SelectResponse.model_validate_json(r.content).model_dump_json().encode() == r.content
    r = client.post("/v1/pools/v/select/batch", json={"queries": [{"item_id": "v0001"}, {"item_id": "meta"}], "k": 3})
    assert r.status_code == 200, r.text
    assert BatchSelectResponse.model_validate_json(r.content).model_dump_json().encode() == r.content


def test_selections_run_in_the_select_threads(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """select and select/batch run off the event loop, in the few threads kept for them."""
    import threading

    from exemplar.app import Settings, create_app

    settings = Settings(data_dir=tmp_path / "data", refresh_s=0.0, select_threads=3)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.post("/v1/pools", json={"name": "v", "encoder": "precomputed:4"})
        client.post("/v1/pools/v/items", json={"items": [{"id": "a", "label": "x", "embedding": [1, 0, 0, 0]}]})
        services = client.app.state.services
        assert services.select_limiter.total_tokens == 3
        seen = []
        select_batch = services.selection.select_batch

        def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            seen.append((threading.current_thread(), services.select_limiter.borrowed_tokens))
            return select_batch(*args, **kwargs)

        monkeypatch.setattr(services.selection, "select_batch", spy)
        assert client.post("/v1/pools/v/select", json={"query": {"embedding_b64": b64(np.array([1, 0, 0, 0]))}}).status_code == 200
        assert client.post("/v1/pools/v/select/batch", json={"queries": [{"item_id": "a"}]}).status_code == 200
        assert len(seen) == 2
        # a worker thread (the TestClient serves the app from a thread of its own), holding a select token
        assert all(thread.name == "AnyIO worker thread" and borrowed == 1 for thread, borrowed in seen)
        from tests.helpers import png_b64

        # a query to encode runs in the shared pool: it holds no select token while the encoder works
        client.post("/v1/pools", json={"name": "t", "encoder": "open_clip:exemplar-tiny"})
        client.post("/v1/pools/t/items", json={"items": [{"id": "a", "label": "x", "image": png_b64()}]})
        assert client.post("/v1/pools/t/select", json={"query": {"image": png_b64()}}).status_code == 200
        assert len(seen) == 3 and seen[-1][1] == 0


def fixed(client: TestClient, queries: list[dict], **body) -> dict:
    r = client.post("/v1/pools/v/select/batch", json={"queries": queries, "strategy": "random", "shared": "fixed", **body})
    assert r.status_code == 200, r.text
    return r.json()


def ids_of(result: dict) -> list[str]:
    return [d["id"] for d in result["demonstrations"]]


def test_fixed_set_is_one_seeded_class_balanced_sample_for_the_batch(client: TestClient, pool) -> None:
    _, labels = pool
    queries = [{"item_id": "v0001"}, {"item_id": "v0002"}, {"item_id": "v0150"}]
    body = fixed(client, queries, k_per_class=3, seed=7)
    assert body["shared"] is True and body["shared_mode"] == "fixed" and body["shuffle_seed"] is None
    sets = [ids_of(res) for res in body["results"]]
    assert len(sets) == 3 and sets[0] == sets[1] == sets[2]
    assert Counter(labels[int(i[1:])] for i in sets[0]) == {lab: 3 for lab in set(labels)}
    assert not {"v0001", "v0002", "v0150"} & set(sets[0])
    assert all(d["score"] is None for d in body["results"][0]["demonstrations"]), "drawn without the queries"
    assert ids_of(fixed(client, queries, k_per_class=3, seed=7)["results"][0]) == sets[0], "seeded"
    others = {tuple(ids_of(fixed(client, queries, k_per_class=3, seed=s)["results"][0])) for s in (8, 9, 10)}
    assert tuple(sets[0]) not in others and len(others) == 3, "seeds differ"
    # k spread over the 4 classes as balanced spreads it: 10 = 3 + 3 + 2 + 2
    spread = fixed(client, queries, k=10, seed=7)["results"][0]
    assert sorted(Counter(d["label"] for d in spread["demonstrations"]).values()) == [2, 2, 3, 3]


def test_fixed_set_does_not_depend_on_the_queries(client: TestClient, pool) -> None:
    V, labels = pool
    reference = ids_of(fixed(client, [{}], k_per_class=4, seed=3)["results"][0])  # no query at all
    inside = reference[:2]  # two of the set's own items as queries: the batch must not see them
    first = ids_of(fixed(client, [{"item_id": i} for i in inside], k_per_class=4, seed=3)["results"][0])
    second = ids_of(fixed(client, [{"embedding": V[5].tolist()}, {"embedding": V[290].tolist()}],
                          k_per_class=4, seed=3)["results"][0])
    assert second == reference, "vectors do not move the set"
    assert not set(inside) & set(first) and len(first) == len(reference)
    assert set(reference) - set(inside) <= set(first), "the same set, less the batch's own items"
    replaced = set(first) - set(reference)
    assert sorted(labels[int(i[1:])] for i in replaced) == sorted(labels[int(i[1:])] for i in inside), \
        "each replaced by the next item of its class"


def test_fixed_set_order_shuffles_reproducibly(client: TestClient, pool) -> None:
    queries = [{"item_id": "v0001"}]
    plain = ids_of(fixed(client, queries, k_per_class=3, seed=4)["results"][0])
    a = fixed(client, queries, k_per_class=3, seed=4, shuffle_seed=11)
    assert a["shuffle_seed"] == 11 and sorted(ids_of(a["results"][0])) == sorted(plain)
    assert ids_of(fixed(client, queries, k_per_class=3, seed=4, shuffle_seed=11)["results"][0]) == ids_of(a["results"][0])
    orders = set()
    for _ in range(4):
        body = fixed(client, queries, k_per_class=3, seed=4, reshuffle=True)
        assert isinstance(body["shuffle_seed"], int) and sorted(ids_of(body["results"][0])) == sorted(plain)
        again = fixed(client, queries, k_per_class=3, seed=4, shuffle_seed=body["shuffle_seed"])
        assert ids_of(again["results"][0]) == ids_of(body["results"][0]), "the reported seed repeats the order"
        orders.add(tuple(ids_of(body["results"][0])))
    assert len(orders) > 1, "a fresh order per call (12 items: four equal draws are out of reach)"


def test_shared_true_is_still_the_mean_set(client: TestClient, pool) -> None:
    queries = [{"item_id": "v0001"}, {"item_id": "v0002"}]
    options = {"queries": queries, "strategy": "balanced", "k_per_class": 2}
    as_bool = client.post("/v1/pools/v/select/batch", json={**options, "shared": True}).json()
    as_mode = client.post("/v1/pools/v/select/batch", json={**options, "shared": "mean"}).json()
    assert as_bool["shared_mode"] == as_mode["shared_mode"] == "mean"
    assert without_timing(as_bool) == without_timing(as_mode)


@pytest.mark.parametrize(("body", "param"), [
    ({"shared": "fixed", "strategy": "balanced"}, "strategy"),
    ({"shared": "fixed"}, "strategy"),
    ({"shared": "sometimes", "strategy": "random"}, "shared"),
    ({"shared": "mean", "strategy": "random", "shuffle_seed": 1}, "shuffle_seed"),
    ({"strategy": "random", "reshuffle": True}, "reshuffle"),
    ({"shared": "fixed", "strategy": "random", "reshuffle": True, "shuffle_seed": 1}, "reshuffle"),
    ({"shared": "fixed", "strategy": "random", "shuffle_seed": -1}, "shuffle_seed"),
    ({"shared": "fixed", "strategy": "random", "diversity": {}}, "diversity"),
])
def test_bad_shared_requests(client: TestClient, pool, body, param) -> None:
    r = client.post("/v1/pools/v/select/batch", json={"queries": [{"item_id": "v0001"}], "k": 4, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def _fused_pool(client: TestClient) -> None:
    from tests.helpers import png_b64

    assert client.post("/v1/pools", json={"name": "it", "encoder": "open_clip:exemplar-tiny",
                                          "embed": "image+text"}).status_code == 201
    items = [{"id": f"i{n}", "label": "ab"[n % 2], "text": f"caption {n}", "image": png_b64(colour)}
             for n, colour in enumerate([(200, 10, 10), (10, 200, 10), (10, 10, 200), (120, 120, 0)])]
    assert client.post("/v1/pools/it/items", json={"items": items}).status_code == 201


def test_fusion_over_http(client: TestClient) -> None:
    from tests.helpers import png_b64

    _fused_pool(client)
    query = {"image": png_b64((190, 20, 20)), "text": "caption 2"}
    image_only = client.post("/v1/pools/it/select", json={"query": query, "k": 4, "fusion": {"image": 1}}).json()
    text_only = client.post("/v1/pools/it/select", json={"query": query, "k": 4, "fusion": {"text": 1}}).json()
    both = client.post("/v1/pools/it/select", json={"query": query, "k": 4, "fusion": {"image": 0.5, "text": 0.5}}).json()
    score = {name: {d["id"]: d["score"] for d in r["demonstrations"]}
             for name, r in (("image", image_only), ("text", text_only), ("both", both))}
    assert text_only["demonstrations"][0]["id"] == "i2"  # its own caption
    for item in score["both"]:  # weights 0.5/0.5: the mean of the two single-modality scores
        assert abs(score["both"][item] - (score["image"][item] + score["text"][item]) / 2) < 1e-5
    same = client.post("/v1/pools/it/select", json={"query": query, "k": 4, "fusion": {"image": 2e-1, "text": 2e-1}})
    assert [d["score"] for d in same.json()["demonstrations"]] == [d["score"] for d in both["demonstrations"]]


@pytest.mark.parametrize(("fusion", "param"), [
    ({}, "fusion"), ({"image": 0, "text": 0}, "fusion"), ({"image": 1.5}, "fusion.image"),
    ({"image": None}, "fusion.image"), ({"alpha": 0.5}, "fusion.alpha"),
])
def test_bad_fusion(client: TestClient, fusion, param) -> None:
    from tests.helpers import png_b64

    _fused_pool(client)
    response = client.post("/v1/pools/it/select", json={"query": {"image": png_b64()}, "k": 2, "fusion": fusion})
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_fusion_on_a_pool_of_one_modality_is_a_conflict(client: TestClient, pool) -> None:
    response = client.post("/v1/pools/v/select", json={"query": {"item_id": "v0000"}, "k": 2,
                                                             "fusion": {"image": 0.5}})
    assert response.status_code == 409 and response.json()["error"]["param"] == "fusion"
