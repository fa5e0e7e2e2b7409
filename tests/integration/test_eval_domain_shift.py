"""`exemplar eval` as a user runs it, on both generated data sets: invariant beats topk in label
precision@k on the held-out domain, with the paired 95% interval of the difference above zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXEMPLAR = [sys.executable, "-m", "exemplar"]


def run(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run([*EXEMPLAR, *args], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(("kind", "encoder"), [("shapes", "open_clip:exemplar-tiny"), ("embeddings", "precomputed:64")])
def test_invariant_beats_topk_on_the_held_out_domain(tmp_path: Path, kind: str, encoder: str) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", EXEMPLAR_DATA_DIR=str(tmp_path / "data"))
    manifest = run("sample", kind, str(tmp_path / kind), "--per-class", "40", env=env).strip()
    run("build", kind, manifest, "--encoder", encoder, env=env)
    report = json.loads(run("eval", kind, "--json", "--strategies", "random,topk,balanced,invariant:topk", env=env))
    diff = report["differences"]["invariant:topk - topk"]["precision_at_k"]
    assert diff["low"] > 0, report["metrics"]
    assert report["metrics"]["invariant:topk"]["precision_at_k"]["mean"] > report["metrics"]["topk"]["precision_at_k"]["mean"]
