"""The OpenAI-compatible chat endpoint end to end: the official ``openai`` package (sync, async,
streaming) as the caller, ``exemplar serve`` and the scripted model server as real processes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from exemplar.samples import generate_shapes
from tests.processes import ROOT, free_port, running

pytestmark = pytest.mark.integration


class Server:
    def __init__(self, base: str, fake: str, media: Path) -> None:
        self.base = base
        self.fake = fake
        self.media = media
        self._clients: list[openai.OpenAI] = []

    def client(self) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{self.base}/v1", api_key="unused", max_retries=0)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def seen(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.fake}/requests").json()

    def reset(self) -> None:
        httpx.post(f"{self.fake}/reset")

    def image(self, name: str) -> str:
        data = (self.media / name).read_bytes()
        return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_mllm: str) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("chat")
    v1 = f"{fake_mllm}/v1"
    endpoints = {
        "fake": {"base_url": v1, "model": "majority"},
        "picky": {"base_url": v1, "model": "error:400", "max_retries": 2},
        "busy": {"base_url": v1, "model": "error:429", "max_retries": 0},
        "broken": {"base_url": v1, "model": "error:500", "max_retries": 1, "backoff_s": 0.01},
        "slow": {"base_url": v1, "model": "slow:5", "timeout_s": 0.5, "max_retries": 0},
        "tight": {"base_url": v1, "model": "majority", "max_images": 3},
        "small": {"base_url": v1, "model": "majority", "max_prompt_bytes": 600},
    }
    env = {"EXEMPLAR_DATA_DIR": str(root / "data"), "EXEMPLAR_MLLM_ENDPOINTS": json.dumps(endpoints)}
    manifest = generate_shapes(root / "src", per_class_per_domain=3)
    subprocess.run([sys.executable, "-m", "exemplar", "build", "shapes", str(manifest)], check=True, timeout=300,
                   env=dict(os.environ, HF_HUB_OFFLINE="1", **env), capture_output=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(["-m", "exemplar", "serve", "--port", str(port)], f"{base}/readyz", root / "serve.log", env=env):
        served = Server(base, fake_mllm, manifest.parent)
        try:
            yield served
        finally:
            served.close()


def _query(server: Server, name: str = "site-b-square-0001") -> dict[str, Any]:
    item = httpx.get(f"{server.base}/v1/pools/shapes/items/{name}").json()
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": server.image(item["image"])}},
                                        {"type": "text", "text": "Which shape is this?"}]}


def _exemplar(resp: Any) -> dict[str, Any]:  # noqa: ANN401 - an openai response model
    extra = resp.model_extra or {}
    assert "exemplar" in extra, "the response carries no exemplar field"
    return extra["exemplar"]


def test_sync_client_gets_demonstrations_before_the_query(server: Server) -> None:
    server.reset()
    query = _query(server)
    resp = server.client().chat.completions.create(
        model="fake", messages=[{"role": "system", "content": "You name shapes."}, query],
        extra_body={"exemplar": {"pool": "shapes", "strategy": "balanced", "k": 8,
                                 "prompt": {"demo_text": "Which shape is this?"}}},
    )
    report = _exemplar(resp)
    demos = report["demonstrations"]
    assert report["pool"] == "shapes" and report["strategy"] == "balanced" and report["version"] >= 1
    assert len(demos) == 8 and report["trimmed"] is None
    assert {d["label"] for d in demos} == {"circle", "square", "triangle", "cross"}
    (seen,) = server.seen()
    # The caller's system message first, then one user/assistant pair per demonstration, then the query.
    assert seen["roles"] == ["system"] + ["user", "assistant"] * 8 + ["user"]
    assert seen["labels"] == [d["label"] for d in demos]
    assert seen["images"] == 9 and seen["query"]["images"] == [query["content"][0]["image_url"]["url"]]
    assert seen["model"] == "majority" and "exemplar" not in seen["keys"]
    assert resp.choices[0].message.content in {"circle", "square", "triangle", "cross"}
    # The same selection as /select for the same image.
    image_b64 = query["content"][0]["image_url"]["url"].split(",", 1)[1]
    selected = httpx.post(f"{server.base}/v1/pools/shapes/select", json={
        "query": {"image": image_b64}, "strategy": "balanced", "k": 8}).json()
    assert [d["id"] for d in selected["demonstrations"]] == [d["id"] for d in demos]


def test_without_exemplar_the_request_passes_through(server: Server) -> None:
    server.reset()
    messages = [{"role": "user", "content": "Say a shape."}]
    resp = server.client().chat.completions.create(model="fake", messages=messages, max_tokens=3)
    assert "exemplar" not in (resp.model_extra or {})
    (seen,) = server.seen()
    assert seen["roles"] == ["user"] and seen["labels"] == [] and seen["query"]["texts"] == ["Say a shape."]
    assert "max_tokens" in seen["keys"] and seen["model"] == "majority"
    assert resp.choices[0].message.content == "unknown"  # the scripted answer with no demonstrations


def test_async_client_concurrent_calls(server: Server) -> None:
    server.reset()
    names = ["site-a-circle-0000", "site-b-square-0001", "site-c-triangle-0002", "site-a-cross-0001"]

    async def main() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0) as client:
            return await asyncio.gather(*(client.chat.completions.create(
                model="fake", messages=[_query(server, name)],
                extra_body={"exemplar": {"pool": "shapes", "strategy": "topk", "k": 4}}) for name in names))

    results = asyncio.run(main())
    assert len(server.seen()) == 4
    for resp in results:
        report = _exemplar(resp)
        assert len(report["demonstrations"]) == 4
        assert [d["rank"] for d in report["demonstrations"]] == [0, 1, 2, 3]


def test_streaming_passes_events_through(server: Server) -> None:
    server.reset()
    client = server.client()
    with client.chat.completions.with_streaming_response.create(
        model="fake", messages=[_query(server)], stream=True,
        extra_body={"exemplar": {"pool": "shapes", "strategy": "balanced", "k_per_class": 1}},
    ) as response:
        report = json.loads(response.headers["x-exemplar"])
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    (seen,) = server.seen()
    assert seen["stream"] is True and seen["labels"] == [d["label"] for d in report["demonstrations"]]
    assert len(report["demonstrations"]) == 4 and text in {"circle", "square", "triangle", "cross"}
    # A plain stream through the openai iterator, without exemplar.
    plain = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices) == "unknown"


def test_iterative_rounds_show_new_windows(server: Server) -> None:
    server.reset()
    resp = server.client().chat.completions.create(
        model="fake", messages=[_query(server)],
        extra_body={"exemplar": {"pool": "shapes", "strategy": "topk",
                                 "iterative": {"window": 2, "max_rounds": 3, "threshold": 0.99}}},
    )
    report = _exemplar(resp)
    rounds = report["rounds"]
    seen = server.seen()
    assert 1 <= len(rounds) == len(seen) <= 3
    assert report["stopped"] in ("confident", "max_rounds")
    ids = [d["id"] for r in rounds for d in r["demonstrations"]]
    assert len(ids) == len(set(ids)) == 2 * len(rounds)
    assert [r["offset"] for r in rounds] == [0, 2, 4][:len(rounds)]
    assert all(s["logprobs"] is True and len(s["labels"]) == 2 for s in seen)
    chosen = rounds[report["chosen_round"]]
    assert resp.choices[0].message.content == chosen["answer"]
    assert resp.choices[0].logprobs is None  # asked for by Exemplar, not by the caller
    if report["stopped"] == "confident":
        assert chosen["confidence"] > 0.99
    else:
        assert chosen["confidence"] == max(r["confidence"] for r in rounds)


def test_limits_trim_the_lowest_ranked(server: Server) -> None:
    server.reset()
    client = server.client()
    resp = client.chat.completions.create(model="tight", messages=[_query(server)],
                                          extra_body={"exemplar": {"pool": "shapes", "strategy": "topk", "k": 6}})
    report = _exemplar(resp)
    assert [d["rank"] for d in report["demonstrations"]] == [0, 1]  # with the query's image: 3 images
    assert report["trimmed"]["reason"] == "max_images" and len(report["trimmed"]["ids"]) == 4
    assert server.seen()[-1]["images"] == 3
    resp = client.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "a square"}],
        extra_body={"exemplar": {"pool": "shapes", "strategy": "topk", "k": 8, "prompt": {"include_images": False}}})
    report = _exemplar(resp)
    kept = len(report["demonstrations"])
    assert 0 < kept < 8 and report["trimmed"]["reason"] == "max_prompt_bytes"
    assert sorted(d["rank"] for d in report["demonstrations"]) == list(range(kept))
    assert server.seen()[-1]["bytes"] <= 600


def test_errors_in_the_openai_shape(server: Server) -> None:
    client = server.client()
    messages = [{"role": "user", "content": "a circle"}]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-9", messages=messages)
    assert unknown.value.param == "model" and "fake" in unknown.value.message
    with pytest.raises(openai.NotFoundError) as pool:
        client.chat.completions.create(model="fake", messages=messages, extra_body={"exemplar": {"pool": "nope"}})
    assert pool.value.param and pool.value.param.startswith("exemplar")
    with pytest.raises(openai.BadRequestError) as bad_k:
        client.chat.completions.create(model="fake", messages=messages,
                                       extra_body={"exemplar": {"pool": "shapes", "k": 0}})
    assert bad_k.value.param == "exemplar.k"
    with pytest.raises(openai.BadRequestError) as linked:
        client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}]}],
            extra_body={"exemplar": {"pool": "shapes"}})
    assert linked.value.param == "messages[0].content" and "data URI" in linked.value.message
    narrow = base64.b64encode(struct.pack("<3f", 1.0, 0.0, 0.0)).decode()  # not the encoder's width
    with pytest.raises(openai.ConflictError) as width:
        client.chat.completions.create(model="fake", messages=messages,
                                       extra_body={"exemplar": {"pool": "shapes", "query": {"embedding_b64": narrow}}})
    assert width.value.param == "exemplar.query.embedding_b64"
    with pytest.raises(openai.BadRequestError) as streamed:
        client.chat.completions.create(model="fake", messages=messages, stream=True,
                                       extra_body={"exemplar": {"pool": "shapes", "iterative": {}}})
    assert streamed.value.param == "stream"

    server.reset()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="picky", messages=messages)
    assert refused.value.code == "scripted_400" and refused.value.param == "messages"
    assert len(server.seen()) == 1  # a 400 is never retried
    with pytest.raises(openai.RateLimitError) as busy:
        client.chat.completions.create(model="busy", messages=messages)
    assert busy.value.response.headers["retry-after"] == "1"
    server.reset()
    with pytest.raises(openai.InternalServerError) as broken:
        client.chat.completions.create(model="broken", messages=messages)
    assert broken.value.status_code == 502 and len(server.seen()) == 2  # retried once
    with pytest.raises(openai.APIStatusError) as slow:
        client.chat.completions.create(model="slow", messages=messages)
    assert slow.value.status_code == 504


def test_chat_selections_reach_the_dashboard_statistics(server: Server) -> None:
    before = httpx.get(f"{server.base}/v1/admin/stats").json()
    resp = server.client().chat.completions.create(
        model="fake", messages=[_query(server)],
        extra_body={"exemplar": {"pool": "shapes", "strategy": "random", "k": 3, "seed": 11}})
    shown = [d["label"] for d in _exemplar(resp)["demonstrations"]]
    after = httpx.get(f"{server.base}/v1/admin/stats").json()
    assert after["strategies"].get("random", 0) == before["strategies"].get("random", 0) + 1
    counts = after["labels_returned"]["shapes"]
    old = before["labels_returned"].get("shapes", {})
    assert sum(counts.values()) - sum(old.values()) == len(shown) == 3


def test_models_lists_the_configured_endpoints(server: Server) -> None:
    names = [m.id for m in server.client().models.list()]
    assert names == sorted(["fake", "picky", "busy", "broken", "slow", "tight", "small"])


def test_openai_example_runs(server: Server) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "openai_chat.py"), "--base-url", f"{server.base}/v1",
         "--model", "fake", "--pool", "shapes", "--image", str(server.media / "images" / "site-a" / "circle" / "0000.png")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["answer"] in {"circle", "square", "triangle", "cross"} and len(out["demonstrations"]) == 8


def test_random_needs_no_query_message(server: Server) -> None:
    server.reset()
    resp = server.client().chat.completions.create(
        model="fake", messages=[{"role": "system", "content": "Name shapes."}],
        extra_body={"exemplar": {"pool": "shapes", "strategy": "random", "k": 4, "seed": 3}})
    report = _exemplar(resp)
    (seen,) = server.seen()
    assert len(report["demonstrations"]) == 4 and seen["roles"] == ["system"] + ["user", "assistant"] * 4
    assert seen["labels"] == [d["label"] for d in report["demonstrations"]]


def test_fusion_weighs_the_query_messages_image_and_text(server: Server) -> None:
    rows = [json.loads(line) for line in (server.media / "manifest.jsonl").read_text().splitlines()][:12]
    assert httpx.post(f"{server.base}/v1/pools", json={"name": "captioned", "embed": "image+text"}).status_code == 201
    items = [{"id": r["id"], "label": r["label"], "text": r["text"],
              "image": base64.b64encode((server.media / r["image"]).read_bytes()).decode()} for r in rows]
    assert httpx.post(f"{server.base}/v1/pools/captioned/items", json={"items": items}, timeout=60).status_code == 201
    image = server.image(rows[0]["image"])
    query = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                         {"type": "text", "text": "a cross imaged at site-c"}]}
    for fusion in ({"text": 1}, {"image": 1}, {"image": 0.5}):
        resp = server.client().chat.completions.create(
            model="fake", messages=[query],
            extra_body={"exemplar": {"pool": "captioned", "strategy": "topk", "k": 5, "fusion": fusion}})
        selected = httpx.post(f"{server.base}/v1/pools/captioned/select", json={
            "query": {"image": image.split(",", 1)[1], "text": "a cross imaged at site-c"}, "strategy": "topk",
            "k": 5, "fusion": fusion}).json()
        # The message's image and text, weighted as select weighs them.
        assert [d["id"] for d in _exemplar(resp)["demonstrations"]] == [d["id"] for d in selected["demonstrations"]]
    by_text = httpx.post(f"{server.base}/v1/pools/captioned/select", json={
        "query": {"image": image.split(",", 1)[1], "text": "a cross imaged at site-c"}, "k": 5,
        "fusion": {"text": 1}}).json()
    by_image = httpx.post(f"{server.base}/v1/pools/captioned/select", json={
        "query": {"image": image.split(",", 1)[1], "text": "a cross imaged at site-c"}, "k": 5,
        "fusion": {"image": 1}}).json()
    assert [d["id"] for d in by_text["demonstrations"]] != [d["id"] for d in by_image["demonstrations"]]
