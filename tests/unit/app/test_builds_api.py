"""HTTP builds: sources only under the configured roots; jobs with progress; one build per pool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from exemplar.app import Settings, create_app
from tests.helpers import wait_job


@pytest.fixture
def rooted(tmp_path: Path):
    root = tmp_path / "sources"
    root.mkdir()
    rng = np.random.default_rng(0)
    (root / "m.jsonl").write_text("".join(
        json.dumps({"id": f"v{i}", "label": f"c{i % 2}", "embedding": rng.normal(size=4).tolist()}) + "\n" for i in range(30)))
    (tmp_path / "secret.jsonl").write_text('{"id": "x", "embedding": [1, 2, 3, 4]}\n')
    settings = Settings(data_dir=tmp_path / "data", source_roots=[root], refresh_s=0.0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.post("/v1/pools", json={"name": "p", "encoder": "precomputed:4"})
        yield client, root, tmp_path


def test_build_over_http(rooted) -> None:
    client, root, _ = rooted
    r = client.post("/v1/pools/p/builds", json={"source": str(root / "m.jsonl"), "shard_size": 7})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["kind"] == "build" and job["state"] == "succeeded"
    assert job["result"]["added"] == 30 and job["result"]["shards"] == 5
    assert set(job["progress"]) >= {"done", "total", "skipped", "rate_per_s", "encoded", "eta_s"}
    assert client.get("/v1/pools/p").json()["size"] == 30
    versions = client.get("/v1/pools/p").json()["versions"]
    assert versions[0]["index"] == "Flat"


# A path the server may not read is refused for its configuration (403); one that is not an
# absolute path without '..' is malformed (400).
@pytest.mark.parametrize(("source", "status"), [("secret.jsonl", 403), ("../secret.jsonl", 400),
                                                ("sources/../secret.jsonl", 400), ("relative.jsonl", 400)])
def test_sources_outside_the_roots_are_refused(rooted, source: str, status: int) -> None:
    client, root, tmp_path = rooted
    path = source if source == "relative.jsonl" else str(tmp_path / source)
    r = client.post("/v1/pools/p/builds", json={"source": path})
    assert r.status_code == status and r.json()["error"]["param"] == "source", r.text
    assert client.get("/v1/jobs").json() == {"jobs": []}


def test_symlinks_out_of_the_roots_are_refused(rooted) -> None:
    client, root, tmp_path = rooted
    (root / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    r = client.post("/v1/pools/p/builds", json={"source": str(root / "link.jsonl")})
    assert r.status_code == 403 and r.json()["error"] == {
        "type": "not_permitted", "param": "source", "message": r.json()["error"]["message"]}


def test_http_builds_are_off_without_roots(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(data_dir=tmp_path / "d")), raise_server_exceptions=False) as client:
        client.post("/v1/pools", json={"name": "p", "encoder": "precomputed:4"})
        r = client.post("/v1/pools/p/builds", json={"source": str(tmp_path)})
        assert r.status_code == 403 and r.json()["error"]["type"] == "not_permitted"
        assert "EXEMPLAR_SOURCE_ROOTS" in r.json()["error"]["message"]


def test_build_errors(rooted) -> None:
    client, root, _ = rooted
    assert client.post("/v1/pools/nope/builds", json={"source": str(root / "m.jsonl")}).status_code == 404
    r = client.post("/v1/pools/p/builds", json={"source": str(root / "missing.jsonl")})
    assert r.status_code == 404 and r.json()["error"]["param"] == "source"
    r = client.post("/v1/pools/p/builds", json={"source": str(root / ("x" * 300) / "m.jsonl")})  # ENAMETOOLONG
    assert r.status_code == 404 and r.json()["error"]["param"] == "source"
    r = client.post("/v1/pools/p/builds", json={"source": str(root) + "/m\u0000.jsonl"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "source"
    r = client.post("/v1/pools/p/builds", json={"source": str(root / "m.jsonl"), "shard_size": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "shard_size"
