"""A battery of hostile inputs: each gets a clear 4xx in the error envelope and leaves every pool as
it was. (The route-by-route cases are in test_errors_api.py; these are the nastier payloads.)"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.helpers import png_bytes
from tests.unit.app.envelopes import envelope, pool_states


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_bytes(fmt: str, size: tuple[int, int] = (40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims ``width`` x ``height`` (a decompression bomb's shape)."""
    data = bytearray(image_bytes("JPEG", (8, 8)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def png_with_bad_crc() -> bytes:
    data = bytearray(png_bytes())
    data[29] ^= 0xFF  # inside the IHDR chunk: its CRC no longer matches
    return bytes(data)


BAD_IMAGES = {
    "truncated-jpeg": image_bytes("JPEG")[:200],
    "truncated-png": png_bytes()[:50],
    "truncated-webp": image_bytes("WEBP")[:40],
    "corrupt-webp": image_bytes("WEBP")[:12] + b"\x00" * 64,
    "png-bad-crc": png_with_bad_crc(),
    "jpeg-bomb-header": jpeg_claiming(60_000, 60_000),
    "text-named-image": b"hello, I am not an image at all",
    "html": b"<html><body>x</body></html>",
    "empty": b"",
    "zip": b"PK\x03\x04" + b"\x00" * 100,
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_bytes_as_query_and_as_item(client: TestClient, seeded_pools, name: str) -> None:
    before = pool_states(client)
    r = client.post("/v1/pools/img/select", json={"query": {"image": encoded(BAD_IMAGES[name])}})
    error = envelope(r, 400, r.json()["error"]["type"], "query.image")
    assert error["type"] in ("invalid_image", "invalid_request")
    r = client.post("/v1/pools/img/items", json={"items": [{"id": "bad", "label": "x", "image": encoded(BAD_IMAGES[name])}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "items[0].image", r.text
    assert pool_states(client) == before


ODD_STRINGS = {
    "very-long": "x" * 5_000,
    "nul": "a\x00b",
    "lone-surrogate": "\ud800",
    "rtl-override": "abc\u202edcba",
    "zero-width": "\u200b",
    "emoji": "🧪" * 100,
    "newlines": "a\nb\r\nc",
}


# Identifiers refuse what cannot be one (too long, not Unicode, control characters that break log
# lines and exports); anything else printable is an identifier like any other.
REFUSED_AS_IDENTIFIERS = {"very-long", "lone-surrogate", "nul", "newlines"}


@pytest.mark.parametrize("name", sorted(ODD_STRINGS))
@pytest.mark.parametrize("field", ["id", "label", "domain"])
def test_odd_ids_and_labels_are_accepted_or_refused_cleanly(client: TestClient, seeded_pools, name: str, field: str) -> None:
    value = ODD_STRINGS[name]
    item = {"id": "odd", "label": "x", "embedding": [0, 0, 1, 0], field: value}
    raw = json.dumps({"items": [item]}, ensure_ascii=True)  # lone surrogates travel as \\ud800 escapes
    before = pool_states(client)
    r = client.post("/v1/pools/vec/items", content=raw, headers={"content-type": "application/json"})
    if name in REFUSED_AS_IDENTIFIERS:
        envelope(r, 400, "invalid_request", f"items[0].{field}")
        assert pool_states(client) == before
        return
    assert r.status_code == 201, r.text
    # Accepted: stored and returned exactly as given, and the pool still serves.
    r = client.post("/v1/pools/vec/select", json={"query": {"embedding": [0, 0, 1, 0]}, "k": 1})
    assert r.status_code == 200 and r.json()["demonstrations"][0][field] == value


def test_duplicate_ids_in_one_request_change_nothing(client: TestClient, seeded_pools) -> None:
    before = pool_states(client)
    items = [{"id": "dup", "embedding": [1, 1, 0, 0]}, {"id": "dup", "embedding": [0, 1, 1, 0]}]
    envelope(client.post("/v1/pools/vec/items", json={"items": items}), 400, "invalid_request", "items[1].id")
    assert pool_states(client) == before


def test_huge_numbers_and_wrong_types_in_vectors(client: TestClient, seeded_pools) -> None:
    before = pool_states(client)
    for embedding in ([1e309, 0, 0, 0], ["1", 0, 0, 0], [[1], 0, 0, 0], [True, 0, 0, 0], [None, 0, 0, 0],
                      [0.0, -0.0, 0, 0]):
        raw = '{"items": [{"id": "h", "embedding": %s}]}' % json.dumps(embedding).replace("Infinity", "1e309")
        r = client.post("/v1/pools/vec/items", content=raw, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (embedding, r.text)
    assert pool_states(client) == before
    # Huge and tiny (subnormal) components are directions like any other: no overflow, no underflow.
    items = [{"id": "big", "embedding": [1e200, 1e200, 1e200, 1e200]}, {"id": "tiny", "embedding": [0, 0, 1e-320, 0]}]
    assert client.post("/v1/pools/vec/items", json={"items": items}).status_code == 201
    for query, expected in (([1, 1, 1, 1], "big"), ([0, 0, 1, 0], "tiny")):
        r = client.post("/v1/pools/vec/select", json={"query": {"embedding": query}, "k": 1})
        best = r.json()["demonstrations"][0]
        assert best["id"] == expected and abs(best["score"] - 1) < 1e-5


class _Recorder(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).hits.append(self.path)
        self.send_response(302)
        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.hits = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.parametrize("url", ["{base}/a.png", "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.png",
                                 "file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO"])
def test_urls_as_images_are_refused_and_never_fetched(client: TestClient, seeded_pools, recorder: str, url: str) -> None:
    url = url.format(base=recorder)
    before = pool_states(client)
    r = client.post("/v1/pools/img/select", json={"query": {"image": url}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "query.image", r.text
    r = client.post("/v1/pools/img/items", json={"items": [{"id": "u", "label": "x", "image": url}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "items[0].image", r.text
    assert _Recorder.hits == [] and pool_states(client) == before


def test_manifest_paths_that_escape_the_media_root_are_row_errors(client: TestClient, seeded_pools, tmp_path: Path,
                                                                   settings, recorder: str) -> None:
    """Through an HTTP build (sources allowed under one root): '..', absolute paths, a symlink out of
    the root and a URL are each reported as a bad row; the good row is built; nothing is fetched."""
    source_root = tmp_path / "src"
    (source_root / "img").mkdir(parents=True)
    (source_root / "img" / "ok.png").write_bytes(png_bytes())
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes((1, 2, 3)))
    (source_root / "img" / "link.png").symlink_to(secret)
    rows = [{"id": "ok", "label": "a", "image": "img/ok.png"}, {"id": "up", "label": "a", "image": "../secret.png"},
            {"id": "abs", "label": "a", "image": str(secret)}, {"id": "link", "label": "a", "image": "img/link.png"},
            {"id": "url", "label": "a", "image": f"{recorder}/a.png"}]
    (source_root / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    client.app.state.services.settings.source_roots = [source_root]
    client.post("/v1/pools", json={"name": "files", "encoder": "open_clip:exemplar-tiny"})
    r = client.post("/v1/pools/files/builds", json={"source": str(source_root / "m.jsonl")})
    assert r.status_code == 202, r.text
    from tests.helpers import wait_job

    job = wait_job(client, r.json()["id"])
    assert job["state"] == "succeeded", job
    errors = {e["item_id"]: e["message"] for e in job["result"]["errors"]}
    assert set(errors) == {"up", "abs", "link", "url"} and "not fetched" in errors["url"]
    assert client.get("/v1/pools/files").json()["size"] == 1 and _Recorder.hits == []


@pytest.fixture
def adapted_pool(client: TestClient) -> str:
    """Three classes in two domains, with a trained adapter, so every strategy can answer."""
    from exemplar.samples import domain_dominant_embeddings
    from tests.helpers import wait_job

    V, labels, domains = domain_dominant_embeddings(per_class_per_domain=6, dim=8, seed=3)
    client.post("/v1/pools", json={"name": "three", "encoder": "precomputed:8"})
    items = [{"id": f"t{i:03d}", "label": labels[i], "domain": domains[i], "embedding": V[i].tolist()}
             for i in range(len(V))]
    assert client.post("/v1/pools/three/items", json={"items": items}).status_code == 201
    job = wait_job(client, client.post("/v1/pools/three/adapters", json={"epochs": 2}).json()["id"])
    assert job["state"] == "succeeded", job
    return "three"


ABSENT = object()
K_VALUES = [ABSENT, None, 0, 3, 1_000]
STRATEGIES = [("topk", None), ("balanced", None), ("random", None), ("invariant", "balanced"), ("invariant", "topk")]


def _expected(strategy: str, base: str | None, k: object, k_per_class: object) -> tuple[int, str | None]:
    """The documented meaning: (status, param of the error) for one combination."""
    per_class = k_per_class not in (ABSENT, None)
    if per_class:
        if k_per_class != 3 and k_per_class != 1:  # 0 or over the limit
            return 400, "k_per_class"
        if strategy == "topk" or base == "topk":
            return 400, "k_per_class"
        return 200, None  # k is not used when k_per_class is set
    if k is None or k == 0 or k == 1_000:
        return 400, "k"
    return 200, None


@pytest.mark.parametrize("strategy,base", STRATEGIES)
def test_every_k_and_k_per_class_combination_has_one_meaning(client: TestClient, adapted_pool: str, strategy: str,
                                                            base: str | None) -> None:
    labels = {lab for lab in client.get(f"/v1/pools/{adapted_pool}").json()["labels"]}
    n_labels = len(labels)
    for k in K_VALUES:
        for k_per_class in [ABSENT, None, 0, 1, 1_000]:
            body: dict = {"query": {"item_id": "t000"}, "strategy": strategy}
            if base:
                body["invariant_base"] = base
            if k is not ABSENT:
                body["k"] = k
            if k_per_class is not ABSENT:
                body["k_per_class"] = k_per_class
            r = client.post(f"/v1/pools/{adapted_pool}/select", json=body)
            status, param = _expected(strategy, base, k, k_per_class)
            if status != 200:
                envelope(r, status, "invalid_request", param)
                continue
            assert r.status_code == 200, (body, r.text)
            demos = r.json()["demonstrations"]
            if k_per_class not in (ABSENT, None):
                counts = {lab: sum(d["label"] == lab for d in demos) for lab in labels}
                assert counts == {lab: k_per_class for lab in labels}, body
                assert len(demos) == k_per_class * n_labels
            else:
                assert len(demos) == (8 if k is ABSENT else k), body
            assert "t000" not in {d["id"] for d in demos}
