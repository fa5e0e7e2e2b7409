"""Operations with real processes: no keys means loopback only; SIGTERM finishes in-flight
requests; access logs are JSON lines with request ids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.processes import free_port, running

pytestmark = pytest.mark.integration


def test_serve_refuses_to_listen_beyond_loopback_without_keys(tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", EXEMPLAR_DATA_DIR=str(tmp_path))
    env.pop("EXEMPLAR_API_KEYS", None)
    result = subprocess.run([sys.executable, "-m", "exemplar", "serve", "--host", "0.0.0.0", "--port", "1"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0" in result.stderr and "EXEMPLAR_API_KEYS" in result.stderr


def test_sigterm_finishes_in_flight_requests(tmp_path: Path, fake_mllm: str) -> None:
    data = tmp_path / "data"
    env = {"EXEMPLAR_DATA_DIR": str(data),
           "EXEMPLAR_MLLM_ENDPOINTS": json.dumps({"slow": {"base_url": f"{fake_mllm}/v1", "model": "slow:1.5"}})}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"v{i}", "label": f"c{i % 2}", "text": f"item {i}",
                                            "embedding": [1.0, float(i)]}) + "\n" for i in range(10)))
    subprocess.run([sys.executable, "-m", "exemplar", "build", "p", str(manifest), "--encoder", "precomputed:2"],
                   env=dict(os.environ, HF_HUB_OFFLINE="1", **env), check=True, capture_output=True, timeout=300)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    outcome: dict[str, object] = {}
    with running(["-m", "exemplar", "serve", "--port", str(port)], f"{base}/readyz", log, env=env) as proc:
        def call() -> None:
            r = httpx.post(f"{base}/v1/pools/p/infer", timeout=30, headers={"x-request-id": "inflight-1"},
                           json={"query": {"item_id": "v1"}, "mllm": "slow", "max_rounds": 1})
            outcome["status"] = r.status_code

        httpx.post(f"{fake_mllm}/reset")
        caller = threading.Thread(target=call)
        caller.start()
        for _ in range(200):  # bounded: until the model has the request, i.e. it is in flight
            if httpx.get(f"{fake_mllm}/requests").json():
                break
            threading.Event().wait(0.02)
        proc.send_signal(signal.SIGTERM)
        caller.join(timeout=30)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert outcome.get("status") == 200, "the request in flight at SIGTERM was answered"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "request" and line.get("path") == "/v1/pools/p/infer"]
    assert access and access[0]["request_id"] == "inflight-1" and access[0]["status"] == 200
    assert access[0]["route"] == "/v1/pools/{pool}/infer" and access[0]["ms"] > 0
