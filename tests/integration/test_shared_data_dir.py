"""Several server processes over one data directory: a write through any of them is served by all,
and jobs run once; on the SQLite catalog (one host) and on a PostgreSQL one (replicas)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.processes import free_port, running

pytestmark = pytest.mark.integration

REFRESH = {"EXEMPLAR_REFRESH_S": "0.2", "EXEMPLAR_LOG_LEVEL": "warning", "EXEMPLAR_COMPACTION_MERGE_FACTOR": "4"}


def eventually(check, timeout_s: float = 20.0):  # noqa: ANN001, ANN201 - a callable returning a truthy value
    """Poll ``check`` until it returns something truthy (bounded in time)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def catalog_env(catalog_url: str | None) -> dict[str, str]:
    """The replicas' catalog (the store tests' parametrised ``catalog_url``: SQLite, then PostgreSQL)."""
    return {"EXEMPLAR_CATALOG_URL": catalog_url, "EXEMPLAR_LEASE_S": "2"} if catalog_url else {}


def test_two_processes_see_each_others_writes(tmp_path: Path, catalog_env: dict[str, str]) -> None:
    data = tmp_path / "data"
    a_port, b_port = free_port(), free_port()
    env = {**REFRESH, **catalog_env, "EXEMPLAR_DATA_DIR": str(data)}
    a, b = f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"
    with running(["-m", "exemplar", "serve", "--port", str(a_port)], f"{a}/readyz", tmp_path / "a.log", env=env), \
            running(["-m", "exemplar", "serve", "--port", str(b_port)], f"{b}/readyz", tmp_path / "b.log", env=env), \
            httpx.Client(timeout=30) as http:
        assert http.post(f"{a}/v1/pools", json={"name": "p", "encoder": "precomputed:4"}).status_code == 201
        for n in range(10):  # through both processes, alternately
            base = a if n % 2 else b
            item = {"id": f"i{n}", "label": "xy"[n % 2], "embedding": [1.0, float(n), 0.5, 1.0]}
            assert http.post(f"{base}/v1/pools/p/items", json={"items": [item]}).status_code == 201
        for base in (a, b):
            eventually(lambda base=base: http.get(f"{base}/v1/pools/p").json()["size"] == 10)
            eventually(lambda base=base: http.get(f"{base}/v1/pools/p/items/i9").status_code == 200)
        r = http.post(f"{b}/v1/pools/p/items/delete", json={"ids": ["i3"]})
        assert r.status_code == 200 and r.json()["deleted"] == ["i3"]
        eventually(lambda: http.get(f"{a}/v1/pools/p/items/i3").status_code == 404)
        picked = http.post(f"{a}/v1/pools/p/select", json={"query": {"embedding": [1, 3, 0.5, 1]}, "k": 9}).json()
        assert len(picked["demonstrations"]) == 9 and "i3" not in {d["id"] for d in picked["demonstrations"]}
        # Compaction ran once, in whichever process noticed first; both serve the compacted version.
        jobs = eventually(lambda: [j for j in http.get(f"{a}/v1/jobs").json()["jobs"] if j["kind"] == "compact"
                                   and j["state"] == "succeeded"])
        assert all(j["state"] in ("succeeded", "queued", "running") for j in http.get(f"{b}/v1/jobs").json()["jobs"])
        assert jobs
        for base in (a, b):
            eventually(lambda base=base: http.get(f"{base}/v1/pools/p").json()["size"] == 9)
            got = http.post(f"{base}/v1/pools/p/select", json={"query": {"embedding": [1, 3, 0.5, 1]}, "k": 9}).json()
            assert sorted(d["id"] for d in got["demonstrations"]) == sorted(d["id"] for d in picked["demonstrations"])


def test_serve_with_several_workers(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**REFRESH, "EXEMPLAR_DATA_DIR": str(tmp_path / "data")}
    with running(["-m", "exemplar", "serve", "--port", str(port), "--workers", "2"], f"{base}/readyz",
                 tmp_path / "workers.log", env=env), httpx.Client(base_url=base, timeout=30) as http:
        assert http.post("/v1/pools", json={"name": "p", "encoder": "precomputed:4"}).status_code == 201
        items = [{"id": f"i{n}", "embedding": [1.0, float(n), 1.0, 0.0]} for n in range(5)]
        assert http.post("/v1/pools/p/items", json={"items": items}).status_code == 201
        # Whichever worker answers, after its refresh it serves the write (40 reads in a row agree).
        def all_agree() -> bool:
            return all(http.get("/v1/pools/p/items/i4").status_code == 200 for _ in range(40))

        eventually(all_agree)
        assert http.post("/v1/pools/p/select", json={"query": {"item_id": "i0"}, "k": 4}).status_code == 200
    log = (tmp_path / "workers.log").read_text()
    assert "Traceback" not in log, log


def test_a_replica_killed_under_select_load_leaves_the_other_answering(tmp_path: Path,
                                                                      catalog_env: dict[str, str]) -> None:
    """A client that retries on the other replica sees no failed request when one is SIGKILLed."""
    env = {**REFRESH, **catalog_env, "EXEMPLAR_DATA_DIR": str(tmp_path / "data")}
    a_port, b_port = free_port(), free_port()
    a, b = f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"
    with running(["-m", "exemplar", "serve", "--port", str(a_port)], f"{a}/readyz", tmp_path / "a.log", env=env) \
            as proc_a, \
            running(["-m", "exemplar", "serve", "--port", str(b_port)], f"{b}/readyz", tmp_path / "b.log", env=env), \
            httpx.Client(timeout=10) as http:
        assert http.post(f"{a}/v1/pools", json={"name": "p", "encoder": "precomputed:4"}).status_code == 201
        items = [{"id": f"i{n}", "label": "xy"[n % 2], "embedding": [1.0, float(n), 0.5, 1.0]} for n in range(20)]
        assert http.post(f"{a}/v1/pools/p/items", json={"items": items}).status_code == 201
        eventually(lambda: http.get(f"{b}/v1/pools/p").json()["size"] == 20)
        failed, answered = 0, 0
        for n in range(200):  # bounded: 200 requests, alternating replicas, a killed halfway
            if n == 100:
                proc_a.kill()
                proc_a.wait(10)
            body = {"query": {"embedding": [1, n % 20, 0.5, 1]}, "k": 4}
            for base in ((a, b) if n % 2 else (b, a)):
                try:
                    r = http.post(f"{base}/v1/pools/p/select", json=body)
                except httpx.TransportError:
                    continue  # the client retries on the other replica
                if r.status_code == 200 and len(r.json()["demonstrations"]) == 4:
                    answered += 1
                    break
            else:
                failed += 1
        assert (failed, answered) == (0, 200)


def test_a_build_whose_replica_is_sigkilled_is_finished_by_the_other_exactly_once(
        tmp_path: Path, catalog_env: dict[str, str]) -> None:
    import json

    import numpy as np

    rows = 30_000
    manifest = tmp_path / "build.jsonl"
    rng = np.random.default_rng(0)
    with manifest.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"b{i}", "label": f"c{i % 5}", "embedding": rng.normal(size=8).round(4).tolist()}) + "\n")
    env = {**REFRESH, **catalog_env, "EXEMPLAR_DATA_DIR": str(tmp_path / "data"),
           "EXEMPLAR_SOURCE_ROOTS": json.dumps([str(tmp_path)])}
    a_port, b_port = free_port(), free_port()
    a, b = f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"
    with running(["-m", "exemplar", "serve", "--port", str(a_port)], f"{a}/readyz", tmp_path / "a.log", env=env) \
            as proc_a, \
            running(["-m", "exemplar", "serve", "--port", str(b_port)], f"{b}/readyz", tmp_path / "b.log", env=env), \
            httpx.Client(timeout=30) as http:
        assert http.post(f"{a}/v1/pools", json={"name": "big", "encoder": "precomputed:8"}).status_code == 201
        job = http.post(f"{a}/v1/pools/big/builds", json={"source": str(manifest), "shard_size": 1000}).json()
        started = eventually(lambda: http.get(f"{a}/v1/jobs/{job['id']}").json()
                             if http.get(f"{a}/v1/jobs/{job['id']}").json()["progress"].get("shards_done", 0) >= 2
                             else None)
        assert started["state"] == "running" and started["attempt"] == 1, "killed mid-build, not after"
        proc_a.kill()
        proc_a.wait(10)
        done = eventually(lambda: (r := http.get(f"{b}/v1/jobs/{job['id']}").json())["state"]
                          in ("succeeded", "failed", "cancelled") and r, timeout_s=120)
        assert done["state"] == "succeeded" and done["attempt"] == 2 and done["owner"] != started["owner"]
        assert done["result"]["resumed_shards"] >= 2, "the other replica went on from the checkpointed shards"
        pool = http.get(f"{b}/v1/pools/big").json()
        assert pool["size"] == rows
        built = [v for v in pool["versions"] if v.get("source") not in (None, "api")]
        assert len(built) == 1, f"one version committed by the build: {pool['versions']}"
        page = http.get(f"{b}/v1/pools/big/items", params={"limit": 1000}).json()
        assert page["matching"] == rows
