"""`exemplar serve` as a real process on a free loopback port, queried with httpx."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from exemplar.samples import generate_shapes
from tests.processes import free_port, running

pytestmark = pytest.mark.integration

EXEMPLAR = [sys.executable, "-m", "exemplar"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("serve")
    env = {"EXEMPLAR_DATA_DIR": str(root / "data")}
    manifest = generate_shapes(root / "src", per_class_per_domain=4)
    subprocess.run([*EXEMPLAR, "build", "shapes", str(manifest)], env=dict(os.environ, HF_HUB_OFFLINE="1", **env),
                   check=True, timeout=300, capture_output=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running([*EXEMPLAR[1:], "serve", "--host", "127.0.0.1", "--port", str(port)], f"{base}/readyz",
                 root / "server.log", env=env):
        yield base


def test_served_pool_answers_balanced_selects(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        stats = client.get("/v1/pools/shapes").json()
        assert stats["size"] == 48 and stats["current_version"] == 1
        r = client.post("/v1/pools/shapes/select",
                        json={"query": {"item_id": "site-b-square-0001"}, "strategy": "balanced", "k": 8})
        assert r.status_code == 200, r.text
        body = r.json()
        assert Counter(d["label"] for d in body["demonstrations"]) == {"circle": 2, "square": 2, "triangle": 2, "cross": 2}
        assert "site-b-square-0001" not in {d["id"] for d in body["demonstrations"]}
        assert r.headers["x-request-id"]
        bad = client.post("/v1/pools/shapes/select", json={"query": {"item_id": "x"}, "strategy": "bogus"})
        assert bad.status_code == 400 and "valid strategies" in bad.json()["error"]["message"]


def test_served_writes_and_rollback(server: str) -> None:
    from tests.helpers import png_b64

    with httpx.Client(base_url=server, timeout=30) as client:
        r = client.post("/v1/pools/shapes/items", json={"items": [{"id": "new-red", "label": "circle", "image": png_b64()}]})
        assert r.status_code == 201 and r.json()["version"] == 2 and r.json()["size"] == 49
        assert client.post("/v1/pools/shapes/versions/1/activate").json()["current_version"] == 1
        r = client.post("/v1/pools/shapes/select", json={"query": {"item_id": "new-red"}})
        assert r.status_code == 404


def test_cli_reports_a_clean_error_for_a_missing_data_dir_pool(tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([*EXEMPLAR, "select", "nope", "--data-dir", str(tmp_path), "--text", "x"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "pool 'nope' does not exist" in result.stderr
