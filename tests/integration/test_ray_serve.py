"""``exemplar serve --ray-serve``: the same app on a real local Ray, as a real process on a loopback
port, its replicas sharing the catalog and the data directory with a plain ``exemplar serve``."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.integration.test_shared_data_dir import REFRESH, eventually
from tests.processes import free_port, running

pytestmark = pytest.mark.integration

pytest.importorskip("ray.serve", reason="Ray Serve is part of the test extras (pip install -e '.[test]')")


@pytest.fixture
def replica_env(tmp_path: Path, postgres_server: str) -> dict[str, str]:
    """The catalog replicas on several hosts would share: PostgreSQL, with short leases."""
    from tests.postgres import schema_url

    return {**REFRESH, "EXEMPLAR_DATA_DIR": str(tmp_path / "data"), "EXEMPLAR_CATALOG_URL": schema_url(postgres_server),
            "EXEMPLAR_LEASE_S": "2"}


def test_ray_serve_replicas_answer_one_api_beside_a_plain_replica(tmp_path: Path, replica_env: dict[str, str]) -> None:
    ray_port, plain_port = free_port(), free_port()
    on_ray, plain = f"http://127.0.0.1:{ray_port}", f"http://127.0.0.1:{plain_port}"
    serve = ["-m", "exemplar", "serve", "--ray-serve", "--replicas", "2", "--replica-cpus", "0.5",
             "--port", str(ray_port)]
    with running(serve, f"{on_ray}/readyz", tmp_path / "ray.log", env=replica_env, timeout_s=180) as proc, \
            running(["-m", "exemplar", "serve", "--port", str(plain_port)], f"{plain}/readyz", tmp_path / "plain.log",
                    env=replica_env), httpx.Client(timeout=30) as http:
        # Serve's proxy spreads requests over both replicas; each registered itself in the catalog.
        answered_by = {http.get(f"{on_ray}/v1/admin/replicas").json()["answered_by"] for _ in range(40)}
        assert len(answered_by) == 2
        listed = http.get(f"{plain}/v1/admin/replicas").json()
        assert listed["catalog"] == "postgresql"
        assert answered_by < {r["id"] for r in listed["replicas"] if r["alive"]}
        assert len([r for r in listed["replicas"] if r["alive"]]) == 3

        # Writes through Ray Serve are served by the plain replica, and the other way round.
        assert http.post(f"{on_ray}/v1/pools", json={"name": "p", "encoder": "precomputed:4"}).status_code == 201
        for n in range(8):
            base = on_ray if n % 2 else plain
            item = {"id": f"i{n}", "label": "xy"[n % 2], "embedding": [1.0, float(n), 0.5, 1.0]}
            assert http.post(f"{base}/v1/pools/p/items", json={"items": [item]}).status_code == 201
        query = {"query": {"embedding": [1, 3, 0.5, 1]}, "strategy": "balanced", "k": 4}
        expected = http.post(f"{plain}/v1/pools/p/select", json=query)
        assert expected.status_code == 200 and len(expected.json()["demonstrations"]) == 4

        def both_replicas_agree() -> bool:  # 20 answers in a row through the proxy: both replicas
            return all(http.post(f"{on_ray}/v1/pools/p/select", json=query).json()["demonstrations"]
                       == expected.json()["demonstrations"] for _ in range(20))

        eventually(both_replicas_agree)
        # The one error envelope, through Serve's proxy as from uvicorn.
        missing = http.post(f"{on_ray}/v1/pools/nope/select", json=query)
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "pool"
        for body in ({"query": {"embedding": [1, 2]}, "k": 2}, {"query": {}, "k": "many"}, {"strategy": "best"}):
            bad, also = (http.post(f"{base}/v1/pools/p/select", json=body) for base in (on_ray, plain))
            assert 400 <= bad.status_code < 500 and (bad.status_code, bad.json()) == (also.status_code, also.json())

        # Stopped, the Serve replicas drain and leave the catalog; the plain replica goes on.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        remaining = http.get(f"{plain}/v1/admin/replicas").json()["replicas"]
        assert [r["id"] for r in remaining if r["alive"]] == [listed["answered_by"]]
        assert http.post(f"{plain}/v1/pools/p/select", json=query).json()["demonstrations"] == expected.json()["demonstrations"]
