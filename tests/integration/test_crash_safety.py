"""SIGKILL of the server at random points while it acknowledges writes, then a restart: the catalog
is intact, the serving version loads, and every acknowledged write is there."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.processes import ROOT, free_port

pytestmark = pytest.mark.integration

ROUNDS = 4
MAX_WRITES_PER_ROUND = 400


def start(data: Path, port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), EXEMPLAR_DATA_DIR=str(data),
               EXEMPLAR_LOG_LEVEL="warning")
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "exemplar", "serve", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server did not become ready: {log.read_text()}")


def writes_until_killed(base: str, proc: subprocess.Popen, round_: int, kill_after_s: float) -> tuple[list[str], int]:
    """Add items one request at a time until the server dies; returns the acknowledged ids and the
    number of requests that were in flight or refused when it died."""
    acknowledged: list[str] = []
    lost = 0
    killer = threading.Timer(kill_after_s, lambda: proc.send_signal(signal.SIGKILL))
    killer.start()
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            for i in range(MAX_WRITES_PER_ROUND):
                item = {"id": f"r{round_}-{i}", "label": "ab"[i % 2], "embedding": [1.0, float(i), float(round_), 1.0]}
                try:
                    r = client.post("/v1/pools/p/items", json={"items": [item]})
                except httpx.TransportError:
                    lost += 1
                    break
                assert r.status_code == 201, r.text
                acknowledged.append(item["id"])
    finally:
        killer.cancel()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return acknowledged, lost


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = tmp_path / "server.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    rng = random.Random(8)
    proc = start(data, port, log)
    try:
        assert httpx.post(f"{base}/v1/pools", json={"name": "p", "encoder": "precomputed:4"}).status_code == 201
        all_acknowledged: list[str] = []
        for round_ in range(ROUNDS):
            acknowledged, _ = writes_until_killed(base, proc, round_, kill_after_s=rng.uniform(0.8, 2.5))
            assert acknowledged, "the kill came before any write; the test proves nothing"
            all_acknowledged += acknowledged
            with closing(sqlite3.connect(data / "catalog.sqlite3")) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            proc = start(data, port, log)
            with httpx.Client(base_url=base, timeout=30) as client:
                stats = client.get("/v1/pools/p").json()
                # Every acknowledged item is served; at most the one unacknowledged in-flight write is extra.
                assert len(all_acknowledged) <= stats["size"] <= len(all_acknowledged) + round_ + 1
                for item_id in all_acknowledged:
                    r = client.post("/v1/pools/p/select", json={"query": {"item_id": item_id}, "k": 1})
                    assert r.status_code == 200, (item_id, r.text)
                states = {v["state"] for v in stats["versions"]}
                assert states <= {"ready", "failed", "pruned"}, states
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        leftovers = [p for p in (data / "pools").rglob(".staging-*")]
        assert not leftovers, leftovers
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
