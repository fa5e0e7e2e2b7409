"""Both VideoICL loops end to end: `exemplar serve` and the scripted model as real processes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from exemplar.samples import generate_shapes
from tests.processes import ROOT, free_port, running

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_mllm: str) -> Iterator[str]:
    root = tmp_path_factory.mktemp("loops")
    env = {"EXEMPLAR_DATA_DIR": str(root / "data"),
           "EXEMPLAR_MLLM_ENDPOINTS": json.dumps({"fake": {"base_url": f"{fake_mllm}/v1", "model": "majority"}})}
    manifest = generate_shapes(root / "src", per_class_per_domain=3)
    subprocess.run([sys.executable, "-m", "exemplar", "build", "shapes", str(manifest)], check=True, timeout=300,
                   env=dict(os.environ, HF_HUB_OFFLINE="1", **env), capture_output=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(["-m", "exemplar", "serve", "--port", str(port)], f"{base}/readyz", root / "serve.log", env=env):
        yield base


def test_server_driven_loop(server: str, fake_mllm: str) -> None:
    httpx.post(f"{fake_mllm}/reset")
    r = httpx.post(f"{server}/v1/pools/shapes/infer", timeout=60, json={
        "query": {"item_id": "site-a-circle-0000"}, "mllm": "fake", "strategy": "balanced", "window": 2,
        "prompt": {"instruction": "Which shape is this?"},
    })
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rounds"] and body["stopped"] in ("confident", "max_rounds")
    seen = httpx.get(f"{fake_mllm}/requests").json()
    assert len(seen) == len(body["rounds"]) and all(s["images"] == 3 for s in seen)


def test_client_driven_loop_example_runs(server: str, fake_mllm: str) -> None:
    httpx.post(f"{fake_mllm}/reset")
    item_id = "site-b-square-0001"
    # The example uses the Python client, importable from its sources (clients/python) as after
    # `pip install ./clients/python`.
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "client_loop.py"), "--server", server, "--pool", "shapes",
         "--item-id", item_id, "--mllm-url", f"{fake_mllm}/v1", "--model", "majority"],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "clients" / "python"), str(ROOT)])),
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    windows = [r["demonstrations"] for r in out["rounds"]]
    flat = [i for w in windows for i in w]
    assert len(flat) == len(set(flat)) and all(len(w) == 2 for w in windows)
    assert out["answer"] in {"circle", "square", "triangle", "cross"}

    # The query turn must show the model the item itself: its image inline, and its text where the
    # server exposes the item's fields (the example falls back to the image alone where it does not).
    image = httpx.get(f"{server}/v1/pools/shapes/items/{item_id}/image")
    assert image.status_code == 200
    expected_image = f"data:{image.headers['content-type']};base64,{base64.b64encode(image.content).decode()}"
    fields = httpx.get(f"{server}/v1/pools/shapes/items/{item_id}")
    expected_texts = [fields.json()["text"]] if fields.status_code == 200 else []
    seen = httpx.get(f"{fake_mllm}/requests").json()
    assert len(seen) == len(out["rounds"])
    for request in seen:
        assert request["query"] == {"images": [expected_image], "texts": expected_texts}
        assert request["images"] == 3  # two demonstrations and the query, all inline
