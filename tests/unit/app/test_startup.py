"""Start-up cost: the CLI and a server over precomputed pools never import torch or open_clip.

torch, torchvision and open_clip take seconds and hundreds of MB to import; only an open_clip
pool's encoder or an adapter training job needs them. Each check runs in a fresh interpreter,
because the test process itself has long imported torch for other tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

_HEAVY_CHECK = """
heavy = sorted({"torch", "torchvision", "open_clip"} & set(sys.modules))
assert not heavy, f"imported {heavy}"
"""

SERVE_PRECOMPUTED = """
import sys
from pathlib import Path

import exemplar.app
import exemplar.app.cli
import exemplar.app.main
import exemplar.app.services
import exemplar.encoders
from fastapi.testclient import TestClient

from exemplar.app import Settings, create_app

settings = Settings(data_dir=Path(sys.argv[1]), refresh_s=0.0)
with TestClient(create_app(settings), raise_server_exceptions=False) as client:
    assert client.post("/v1/pools", json={"name": "vec", "encoder": "precomputed:4"}).status_code == 201
    items = [{"id": "a", "label": "x", "embedding": [1, 0, 0, 0]}, {"id": "b", "label": "x", "embedding": [0, 1, 0, 0]}]
    assert client.post("/v1/pools/vec/items", json={"items": items}).status_code < 300
    # The parameters are checked as the request arrives, then the pool is refused (one class) before
    # any job starts: neither step may need the trainer.
    refused = client.post("/v1/pools/vec/adapters", json={"epochs": 1})
    assert refused.status_code == 409 and "2 classes" in refused.text, refused.text
# A restart loads the pool, and its encoder, from disk.
with TestClient(create_app(settings), raise_server_exceptions=False) as client:
    assert [p["name"] for p in client.get("/v1/pools").json()["pools"]] == ["vec"]
    r = client.post("/v1/pools/vec/select", json={"query": {"embedding": [1, 0, 0, 0]}, "k": 1})
    assert r.status_code == 200, r.text
""" + _HEAVY_CHECK

CLI_HELP = """
import runpy
import sys

sys.argv = ["exemplar", *sys.argv[1:], "--help"]
try:
    runpy.run_module("exemplar", run_name="__main__")
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
""" + _HEAVY_CHECK

ENCODERS_PACKAGE = """
import sys

from exemplar.encoders import TINY_ARCH, EncoderRegistry, PrecomputedEncoder, load_encoder, parse_spec

assert isinstance(EncoderRegistry()("precomputed:8"), PrecomputedEncoder)
assert load_encoder("precomputed:3").dim == 3
assert parse_spec(f"open_clip:{TINY_ARCH}", default_random_archs=frozenset({TINY_ARCH})).source == "random"
""" + _HEAVY_CHECK


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)


def test_a_server_over_precomputed_pools_never_imports_torch(tmp_path: Path) -> None:
    result = _run(SERVE_PRECOMPUTED, str(tmp_path / "data"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("command", [[], ["serve"], ["build"], ["adapt"]])
def test_cli_help_never_imports_torch(command: list[str]) -> None:
    result = _run(CLI_HELP, *command)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Usage:" in result.stdout


def test_the_encoders_package_imports_open_clip_only_for_open_clip_encoders() -> None:
    result = _run(ENCODERS_PACKAGE)
    assert result.returncode == 0, result.stdout + result.stderr
