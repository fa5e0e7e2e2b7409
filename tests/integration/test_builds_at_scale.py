"""Builds as a user runs them: progress, SIGKILL and resume, and a server that keeps answering
while versions switch under it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from exemplar.samples import generate_shapes
from tests.processes import ROOT, free_port, running

pytestmark = pytest.mark.integration

EXEMPLAR = [sys.executable, "-m", "exemplar"]


def env_for(data: Path) -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", EXEMPLAR_DATA_DIR=str(data), PYTHONPATH=str(ROOT))


def rows(n: int, start: int = 0, dim: int = 8) -> list[str]:
    rng = np.random.default_rng(start)
    return [json.dumps({"id": f"v{i:05d}", "label": f"c{i % 4}", "embedding": rng.normal(size=dim).round(5).tolist()})
            for i in range(start, start + n)]


def test_2000_images_build_with_progress_and_are_queryable(tmp_path: Path) -> None:
    manifest = generate_shapes(tmp_path / "src", per_class_per_domain=167)  # 4 x 3 x 167 = 2004 images
    result = subprocess.run([*EXEMPLAR, "build", "shapes", str(manifest), "--shard-size", "500"],
                            env=env_for(tmp_path / "data"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["added"], report["shards"], report["version"]) == (2004, 5, 1)
    assert "building shapes" in result.stderr and "encoded" in result.stderr
    select = subprocess.run([*EXEMPLAR, "select", "shapes", "--item-id", "site-c-cross-0100", "--strategy", "balanced",
                             "--k", "8"], env=env_for(tmp_path / "data"), capture_output=True, text=True, timeout=300)
    assert select.returncode == 0, select.stderr
    assert len(json.loads(select.stdout)["demonstrations"]) == 8


def test_a_build_killed_with_sigkill_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    source = tmp_path / "source.jsonl"
    os.mkfifo(source)  # the test feeds the build at its own pace, so it can kill it mid-way
    builds = data / "builds"
    proc = subprocess.Popen([*EXEMPLAR, "build", "vec", str(source), "--encoder", "precomputed:8", "--shard-size", "10"],
                            env=env_for(data), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fed = threading.Event()

    def feed() -> None:
        with open(source, "w") as fifo:
            fifo.write("\n".join(rows(35)) + "\n")
            fifo.flush()
            fed.wait(120)  # keep the pipe open: the build waits for more rows when it is killed

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(builds.glob("*/shard-*.json"))) < 3:
        time.sleep(0.05)
    assert len(list(builds.glob("*/shard-*.json"))) == 3
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    fed.set()
    writer.join(timeout=10)

    os.unlink(source)
    source.write_text("\n".join(rows(60)) + "\n")
    result = subprocess.run([*EXEMPLAR, "build", "vec", str(source)], env=env_for(data), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming build" in result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["resumed_shards"] == 3 and report["added"] == 60 and report["version"] == 1
    assert not list(builds.glob("*/shard-*.json")), "the work folder is removed once the version is written"


QUERIER = """
import json, os, sys, time, httpx
base, out, stop_file, max_seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
results = []
deadline = time.monotonic() + max_seconds
with httpx.Client(base_url=base, timeout=10) as client:
    # until the test says stop (after its switches), so a slow machine cannot end the queries early
    while time.monotonic() < deadline and not os.path.exists(stop_file) and len(results) < 50000:
        r = client.post("/v1/pools/vec/select", json={"query": {"embedding": [1, 0, 0, 0, 0, 0, 0, 0]}, "k": 3})
        results.append([r.status_code, r.json().get("version")])
        if len(results) == 1:
            open(stop_file + ".started", "w").close()
open(out, "w").write(json.dumps(results))
"""


def test_versions_switch_without_a_failed_request(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = tmp_path / "first.jsonl"
    first.write_text("\n".join(rows(300)) + "\n")
    subprocess.run([*EXEMPLAR, "build", "vec", str(first), "--encoder", "precomputed:8"], env=env_for(data),
                   check=True, capture_output=True, timeout=300)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(["-m", "exemplar", "serve", "--port", str(port)], f"{base}/readyz", tmp_path / "serve.log",
                 env={"EXEMPLAR_DATA_DIR": str(data), "EXEMPLAR_REFRESH_S": "0.2"}):
        out = tmp_path / "queries.json"
        stop = tmp_path / "stop"
        querier = subprocess.Popen([sys.executable, "-c", QUERIER, base, str(out), str(stop), "240"])
        more = tmp_path / "more.jsonl"
        more.write_text("\n".join(rows(200, start=300)) + "\n")
        deadline = time.monotonic() + 60
        while not Path(f"{stop}.started").exists() and time.monotonic() < deadline:  # its first answer is from v1
            time.sleep(0.05)
        # a new version built by another process, picked up by the server without a restart
        subprocess.run([*EXEMPLAR, "build", "vec", str(more), "--mode", "upsert"], env=env_for(data), check=True,
                       capture_output=True, timeout=300)
        time.sleep(1.5)
        for version in (1, 2, 1, 2):  # rollbacks and roll-forwards through the API
            assert httpx.post(f"{base}/v1/pools/vec/versions/{version}/activate", timeout=30).status_code == 200
            time.sleep(0.7)
        stop.touch()
        assert querier.wait(timeout=60) == 0
    results = json.loads(out.read_text())
    statuses = {status for status, _ in results}
    versions = [version for _, version in results]
    assert len(results) > 100 and statuses == {200}, statuses
    assert versions[0] == 1 and 2 in versions and versions.index(2) < len(versions) - 1
    switches = sum(1 for a, b in zip(versions, versions[1:]) if a != b)
    assert switches >= 4
