"""infer/batch's ablation baselines against the scripted model server: label perturbations seeded
per call (``demo_labels``) and a fresh seeded order of the fixed set per call (``reshuffle``), each
call reporting what it showed so that it can be asked for again."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from exemplar.app import Settings, create_app
from exemplar.retrieval.perturb import Noise, shown_labels
from tests.unit.app.envelopes import envelope

LABELS = ("circle", "square", "triangle")
# Queries are pool items (never among the demonstrations); 12 of them, 3 per call.
QUERIES = [f"{label[0]}{i}" for i in range(4) for label in LABELS]
# The assistant turn names the item and the label shown, so the scripted server's record of the
# prompt says which demonstration sat where and with which label.
PROMPT = {"answer": "{id}={label}"}


@pytest.fixture
def client(tmp_path, fake_mllm: str) -> Iterator[TestClient]:
    httpx.post(f"{fake_mllm}/reset", timeout=10)
    settings = Settings(data_dir=tmp_path / "data", refresh_s=0.0, mllm_endpoints={
        "multi": {"base_url": f"{fake_mllm}/v1", "model": "multi", "backoff_s": 0.01}})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        rng = np.random.default_rng(0)
        c.post("/v1/pools", json={"name": "shapes", "encoder": "precomputed:8"})
        items = [{"id": f"{label[0]}{i}", "label": label, "text": f"{label} {label[0]}{i}",
                  "embedding": rng.normal(size=8).tolist()} for label in LABELS for i in range(12)]
        assert c.post("/v1/pools/shapes/items", json={"items": items}).status_code == 201
        yield c


def seen(fake_mllm: str) -> list[dict]:
    return httpx.get(f"{fake_mllm}/requests", timeout=10).json()


def infer_batch(client: TestClient, **body) -> dict:
    request = {"queries": [{"item_id": q} for q in QUERIES], "mllm": "multi", "k_per_class": 4,
               "queries_per_call": 3, "prompt": PROMPT, **body}
    r = client.post("/v1/pools/shapes/infer/batch", json=request)
    assert r.status_code == 200, r.text
    return r.json()


def shown(call: dict) -> list[tuple[str, str | None]]:
    return [(d["id"], d["shown_label"]) for d in call["demonstrations"]]


def test_without_baselines_every_call_shows_the_set_as_it_is(client, fake_mllm) -> None:
    body = infer_batch(client, seed=3)
    assert body["shuffle_seed"] is None and len(body["calls"]) == 4
    for call in body["calls"]:
        assert call["shuffle_seed"] is None
        assert call["demonstrations"] == [{**d, "shown_label": d["label"]} for d in body["demonstrations"]]
    assert [r["labels"] for r in seen(fake_mllm)] == [[f"{d['id']}={d['label']}" for d in body["demonstrations"]]] * 4


@pytest.mark.parametrize("mode", ["shuffled", "random", {"noise": 0.5}])
def test_perturbed_labels_are_seeded_by_the_call_and_reported(client, fake_mllm, mode) -> None:
    body = infer_batch(client, demo_labels=mode, seed=5)
    true = [d["label"] for d in body["demonstrations"]]
    perturb = mode if isinstance(mode, str) else Noise(mode["noise"])
    per_call = []
    for c, call in enumerate(body["calls"]):
        assert [d["id"] for d in call["demonstrations"]] == [d["id"] for d in body["demonstrations"]]
        assert [d["label"] for d in call["demonstrations"]] == true, "'label' stays the true one"
        expected = shown_labels(true, perturb, label_space=LABELS, seed=5 + c)
        assert [d["shown_label"] for d in call["demonstrations"]] == expected, c
        per_call.append(expected)
    assert len({tuple(x) for x in per_call}) > 1, "each call is seeded by its own index"
    assert any(x != true for x in per_call), "the labels were perturbed"
    # The model saw exactly what each call reports.
    assert [r["labels"] for r in seen(fake_mllm)] == [[f"{i}={lab}" for i, lab in shown(call)] for call in body["calls"]]
    if mode == "shuffled":
        assert all(Counter(x) == Counter(true) for x in per_call), "shuffling keeps the label multiset"
    again = infer_batch(client, demo_labels=mode, seed=5)
    assert [shown(call) for call in again["calls"]] == [shown(call) for call in body["calls"]], "reproducible"


def test_random_labels_come_from_the_labels_filter(client) -> None:
    body = infer_batch(client, demo_labels="random", labels=["circle", "square"], seed=1)
    assert {d["shown_label"] for call in body["calls"] for d in call["demonstrations"]} <= {"circle", "square"}


def test_full_noise_changes_every_label(client) -> None:
    body = infer_batch(client, demo_labels={"noise": 1.0})
    assert all(d["shown_label"] != d["label"] for call in body["calls"] for d in call["demonstrations"])


def test_reshuffle_gives_every_call_its_own_order_reproduced_by_its_seed(client, fake_mllm) -> None:
    body = infer_batch(client, reshuffle=True, demo_labels="shuffled", seed=7)
    assert body["shuffle_seed"] is None, "each call reports its own"
    the_set = sorted(d["id"] for d in body["demonstrations"])
    orders = [[d["id"] for d in call["demonstrations"]] for call in body["calls"]]
    assert all(sorted(order) == the_set for order in orders), "the same set in every call"
    assert len({tuple(order) for order in orders}) == len(orders), "every call's order differs"
    seeds = [call["shuffle_seed"] for call in body["calls"]]
    assert all(isinstance(s, int) for s in seeds)
    assert [r["labels"] for r in seen(fake_mllm)] == [[f"{i}={lab}" for i, lab in shown(call)] for call in body["calls"]]
    for c, call in enumerate(body["calls"]):
        # The same batch with the call's seed shows its order in every call, and its labels in call c.
        repeated = infer_batch(client, shuffle_seed=call["shuffle_seed"], demo_labels="shuffled", seed=7)
        assert [d["id"] for d in repeated["demonstrations"]] == orders[c]
        assert all(x["shuffle_seed"] == call["shuffle_seed"] for x in repeated["calls"])
        assert shown(repeated["calls"][c]) == shown(call)
    # ... and it is select/batch's order for that seed.
    selected = client.post("/v1/pools/shapes/select/batch", json={
        "queries": [{"item_id": q} for q in QUERIES], "strategy": "random", "shared": "fixed", "k_per_class": 4,
        "seed": 7, "shuffle_seed": seeds[0]}).json()
    assert [d["id"] for d in selected["results"][0]["demonstrations"]] == orders[0]


@pytest.mark.parametrize(("body", "param"), [
    ({"reshuffle": True, "shuffle_seed": 3}, "reshuffle"),
    ({"reshuffle": True, "shared": "mean", "strategy": "balanced"}, "reshuffle"),
    ({"reshuffle": "yes"}, "reshuffle"),
    ({"demo_labels": "sideways"}, "demo_labels"),
    ({"demo_labels": {"noise": 1.5}}, "demo_labels.noise"),
    ({"demo_labels": {"noise": 0.5, "extra": 1}}, "demo_labels"),
])
def test_bad_baselines_are_refused_in_the_envelope(client, fake_mllm, body, param) -> None:
    request = {"queries": [{"item_id": "c0"}], "mllm": "multi", "k_per_class": 1, **body}
    envelope(client.post("/v1/pools/shapes/infer/batch", json=request), 400, "invalid_request", param)
    assert seen(fake_mllm) == []
