"""The proxy of ``docker/compose.replicas.yaml`` (its own ``docker/nginx.conf``, the container names
swapped for loopback ports) in front of two replicas over one PostgreSQL catalog: a replica
SIGKILLed under concurrent select load costs no request, and writes go on through the other."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.integration.test_shared_data_dir import REFRESH, eventually
from tests.processes import ROOT, free_port, running

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        if os.environ.get("EXEMPLAR_TEST_REQUIRE_NGINX"):
            raise AssertionError("nginx is required here (apt-get install nginx-light)")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return found


@contextmanager
def compose_proxy(nginx: str, root: Path, replica_ports: list[int]) -> Iterator[str]:
    """docker/nginx.conf as compose runs it, but on loopback: the upstreams are our replicas."""
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    names = re.findall(r"server (exemplar-\d+):8000", conf)
    assert len(names) == len(replica_ports) == 2, "the compose file's two replicas"
    for name, port in zip(names, replica_ports):
        conf = conf.replace(f"{name}:8000", f"127.0.0.1:{port}")
    port = free_port()
    conf = conf.replace("listen 8000;", f"listen 127.0.0.1:{port};").replace("worker_processes auto;", "worker_processes 1;")
    for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        conf = conf.replace("http {", f"http {{\n  {temp}_temp_path {root / temp};", 1)
    root.mkdir(parents=True, exist_ok=True)
    (root / "nginx.conf").write_text(conf)
    globals_ = f"daemon off; pid {root / 'nginx.pid'}; error_log {root / 'error.log'} warn;"
    check = subprocess.run([nginx, "-t", "-p", str(root), "-c", str(root / "nginx.conf"), "-g", globals_],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", globals_],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        eventually(lambda: _answers(f"{url}/readyz"))
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_a_replica_killed_behind_the_proxy_costs_no_request(tmp_path: Path, nginx_binary: str,
                                                            postgres_server: str) -> None:
    from tests.postgres import schema_url

    env = {**REFRESH, "EXEMPLAR_DATA_DIR": str(tmp_path / "data"), "EXEMPLAR_CATALOG_URL": schema_url(postgres_server),
           "EXEMPLAR_LEASE_S": "2"}
    ports = [free_port(), free_port()]
    serve = [["-m", "exemplar", "serve", "--port", str(p)] for p in ports]
    with running(serve[0], f"http://127.0.0.1:{ports[0]}/readyz", tmp_path / "a.log", env=env) as proc_a, \
            running(serve[1], f"http://127.0.0.1:{ports[1]}/readyz", tmp_path / "b.log", env=env), \
            compose_proxy(nginx_binary, tmp_path / "nginx", ports) as proxy, \
            httpx.Client(base_url=proxy, timeout=30) as http:
        assert http.post("/v1/pools", json={"name": "p", "encoder": "precomputed:4"}).status_code == 201
        items = [{"id": f"i{n}", "label": "xy"[n % 2], "embedding": [1.0, float(n), 0.5, 1.0]} for n in range(20)]
        assert http.post("/v1/pools/p/items", json={"items": items}).status_code == 201
        for port in ports:
            eventually(lambda port=port: httpx.get(f"http://127.0.0.1:{port}/v1/pools/p").json()["size"] == 20)

        outcomes: list[int | str] = []
        lock = threading.Lock()

        def load(worker: int) -> None:  # bounded: 60 selects per thread, through the proxy only
            with httpx.Client(base_url=proxy, timeout=30) as client:
                for n in range(60):
                    body = {"query": {"embedding": [1, (n + worker) % 20, 0.5, 1]}, "k": 4}
                    try:
                        r = client.post("/v1/pools/p/select", json=body)
                        outcome: int | str = r.status_code if len(r.json().get("demonstrations", [])) == 4 else "short"
                    except (httpx.TransportError, ValueError) as exc:
                        outcome = type(exc).__name__
                    with lock:
                        outcomes.append(outcome)
                    time.sleep(0.005)

        threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        eventually(lambda: len(outcomes) >= 80)
        proc_a.kill()  # mid-load: requests in flight on it and new ones routed to it
        proc_a.wait(10)
        for t in threads:
            t.join(120)
        assert len(outcomes) == 240 and [o for o in outcomes if o != 200] == []

        # Writes go on through the proxy, to the replica still standing.
        more = [{"id": "late", "label": "x", "embedding": [1.0, 2.0, 0.5, 1.0]}]
        assert http.post("/v1/pools/p/items", json={"items": more}).status_code == 201
        assert http.get("/v1/pools/p").json()["size"] == 21
