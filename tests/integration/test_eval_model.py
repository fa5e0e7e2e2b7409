"""`exemplar eval POOL --mllm NAME` as a user runs it, against the scripted model server (a real
process) on the generated shapes pool.

The shapes' texts name their shape ("a circle imaged at site-b") and a held-out query never shares
a domain with its demonstrations, so the scripted ``nearest`` model (it copies the label of the
demonstration whose text shares the most words with the query's) answers right exactly when the
query's class is among the demonstrations and its true label is shown with one of them. Shuffling
the labels can only lose answers (a permutation shows no label the window lacks), so true labels
beat shuffled ones query by query, while ``majority`` (blind to which label goes with which
input) answers the same either way except where the window's top labels tie (it breaks ties by
order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from exemplar.samples import generate_shapes
from tests.processes import free_port

pytestmark = pytest.mark.integration

EXEMPLAR = [sys.executable, "-m", "exemplar"]
QUERIES_PER_DOMAIN = 8  # 3 held-out domains
K = 4


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, fake_mllm: str) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eval-model")
    endpoints = {name: {"base_url": f"{fake_mllm}/v1", "model": model, "backoff_s": 0.01, **extra}
                 for name, model, extra in [("nearest", "nearest", {}), ("majority", "majority", {}),
                                            ("recency", "recency", {}),
                                            ("broken", "error:500", {"max_retries": 0})]}
    endpoints["down"] = {"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "x", "max_retries": 0}
    env = dict(os.environ, HF_HUB_OFFLINE="1", EXEMPLAR_DATA_DIR=str(root / "data"),
               EXEMPLAR_MLLM_ENDPOINTS=json.dumps(endpoints))
    manifest = generate_shapes(root / "src", per_class_per_domain=10)
    subprocess.run([*EXEMPLAR, "build", "shapes", str(manifest), "--encoder", "open_clip:exemplar-tiny"], check=True,
                   timeout=300, env=env, capture_output=True)
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXEMPLAR, "eval", "shapes", "-k", str(K), "--max-queries", str(QUERIES_PER_DOMAIN),
                           "--strategies", "topk,balanced", *args], env=env, capture_output=True, text=True, timeout=300)


def report(env: dict[str, str], fake_mllm: str, mllm: str, *args: str) -> dict:
    httpx.post(f"{fake_mllm}/reset")
    result = run(env, "--mllm", mllm, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_accuracy_per_arm_with_intervals_beside_the_proxies(env, fake_mllm) -> None:
    body = report(env, fake_mllm, "nearest")
    n = 3 * QUERIES_PER_DOMAIN
    assert body["queries"] == n and body["proxies"]["queries"] == n and body["k"] == K
    assert list(body["arms"]) == ["topk", "balanced", "zero-shot", "topk+shuffled"]
    for arm, result in body["arms"].items():
        acc = result["accuracy"]
        assert 0 <= acc["low"] <= acc["mean"] <= acc["high"] <= 1, arm
        assert result["failures"] == 0 and result["errors"] == []
    assert body["arms"]["zero-shot"]["accuracy"]["mean"] == 0, "nothing to copy: the scripted model says 'unknown'"
    # nearest is right exactly when the query's class is among the true-labelled demonstrations.
    for arm in ("topk", "balanced"):
        assert body["arms"][arm]["accuracy"]["mean"] == pytest.approx(body["proxies"]["metrics"][arm]["hit_rate"]["mean"])
    true, shuffled = body["arms"]["topk"]["accuracy"]["mean"], body["arms"]["topk+shuffled"]["accuracy"]["mean"]
    assert true > shuffled
    assert body["differences"]["topk - topk+shuffled"]["mean"] == pytest.approx(true - shuffled)
    assert body["differences"]["topk - topk+shuffled"]["low"] > 0
    assert set(body["differences"]) == {"topk - zero-shot", "balanced - zero-shot", "topk - topk+shuffled"}

    seen = httpx.get(f"{fake_mllm}/requests").json()
    assert len(seen) == 4 * n, "one call per arm and query"
    assert sorted(len(s["labels"]) for s in seen) == [0] * n + [K] * (3 * n), "zero-shot calls show no demonstrations"
    shown = [s for s in seen if s["labels"]]
    assert all(s["images"] == K + 1 and s["query"]["images"][0].startswith("data:image/") for s in shown)
    assert all(s["images"] == 1 for s in seen if not s["labels"])


def test_shuffling_is_seeded_and_only_moves_labels(env, fake_mllm) -> None:
    first = report(env, fake_mllm, "nearest", "--strategies", "topk", "--seed", "3", "--concurrency", "1")
    windows = [tuple(sorted(s["labels"])) for s in httpx.get(f"{fake_mllm}/requests").json() if s["labels"]]
    again = report(env, fake_mllm, "nearest", "--strategies", "topk", "--seed", "3", "--concurrency", "1")
    assert again["arms"] == first["arms"]
    # The true and shuffled arms show the same multiset of labels for each query.
    n = first["queries"]
    assert windows[:n] == windows[n:]


def test_majority_is_blind_to_shuffled_labels_but_not_to_random_ones(env, fake_mllm) -> None:
    body = report(env, fake_mllm, "majority", "--label-arms", "shuffled,random,noise:1", "--concurrency", "1")
    arms, n = body["arms"], body["queries"]
    assert list(arms) == ["topk", "balanced", "zero-shot", "topk+shuffled", "topk+random", "topk+noise:1"]
    seen = httpx.get(f"{fake_mllm}/requests").json()
    true, shuffled = seen[:n], seen[3 * n:4 * n]  # one call at a time: in the order of the arms
    assert [sorted(a["labels"]) for a in true] == [sorted(b["labels"]) for b in shuffled]
    ties = sum(1 for a in true if len({c for c in a["labels"] if a["labels"].count(c) == max(map(a["labels"].count, a["labels"]))}) > 1)
    gap = abs(arms["topk"]["accuracy"]["mean"] - arms["topk+shuffled"]["accuracy"]["mean"])
    assert gap <= ties / n + 1e-9, "a permutation keeps a strict majority"
    assert arms["topk+noise:1"]["accuracy"]["mean"] < arms["topk"]["accuracy"]["mean"]


def test_failures_are_counted_per_arm_not_fatal(env, fake_mllm) -> None:
    for mllm in ("broken", "down"):
        httpx.post(f"{fake_mllm}/reset")
        result = run(env, "--mllm", mllm, "--json")
        assert result.returncode == 0, result.stderr
        body = json.loads(result.stdout)
        for arm in body["arms"].values():
            assert arm["failures"] == body["queries"] and arm["accuracy"]["mean"] == 0
            assert len(arm["errors"]) == 1 and arm["errors"][0].startswith(("upstream", "mllm"))
        assert "every model call failed" in result.stderr


def test_table_and_refusals(env, fake_mllm) -> None:
    httpx.post(f"{fake_mllm}/reset")
    result = run(env, "--mllm", "nearest")
    assert result.returncode == 0, result.stderr
    assert "| arm | model accuracy |" in result.stdout and "| topk+shuffled |" in result.stdout
    assert "| zero-shot | 0.000 [0.000, 0.000] | 0 | - | - |" in result.stdout
    assert "retrieval proxies on the same queries" in result.stdout
    result = run(env, "--mllm", "gpt-99")
    assert result.returncode != 0 and "unknown model endpoint 'gpt-99'" in result.stderr
    result = run(env, "--mllm", "nearest", "--label-arms", "upside-down")
    assert result.returncode != 0 and "label-arms" in result.stderr
    result = run(env, "--mllm", "nearest", "--label-arm-strategy", "random")
    assert result.returncode != 0 and "label_arm_strategy" in result.stderr
    assert len(httpx.get(f"{fake_mllm}/requests").json()) == 4 * 3 * QUERIES_PER_DOMAIN, "refusals call nothing"


def test_an_order_arm_shows_the_same_demonstrations_in_its_order(env, fake_mllm) -> None:
    # The scripted recency model answers the label of the demonstration next to the query: with
    # most_similar_last that is the nearest one, so the arm is right exactly where topk's nearest
    # demonstration has the query's label (topk's precision at k = 1, over the same sampled queries).
    body = report(env, fake_mllm, "recency", "--label-arms", "", "--order-arms", "most_similar_last")
    assert list(body["arms"]) == ["topk", "balanced", "zero-shot", "topk+most_similar_last"]
    nearest = run(env, "-k", "1", "--json")
    assert nearest.returncode == 0, nearest.stderr
    precision_at_1 = json.loads(nearest.stdout)["metrics"]["topk"]["precision_at_k"]["mean"]
    assert body["arms"]["topk+most_similar_last"]["accuracy"]["mean"] == pytest.approx(precision_at_1)
    assert body["differences"]["topk+most_similar_last - topk"]["mean"] == pytest.approx(
        body["arms"]["topk+most_similar_last"]["accuracy"]["mean"] - body["arms"]["topk"]["accuracy"]["mean"])
    bad = run(env, "--mllm", "recency", "--order-arms", "most_similar_first")
    assert bad.returncode != 0 and "most_similar_last" in bad.stderr
