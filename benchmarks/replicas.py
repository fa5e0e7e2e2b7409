"""Replicas over one PostgreSQL catalog: write-to-visible across replicas (p50/p99) and the time
from SIGKILLing a replica mid-build to another replica finishing that build.

    python benchmarks/replicas.py --out benchmarks/results/replicas.json

Starts a throwaway PostgreSQL (tests/postgres.py) and `exemplar serve` processes on loopback
ports; every loop is bounded. On this 2-core machine the servers, PostgreSQL and this client share
the cores: the figures are upper bounds for a real deployment.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.postgres import schema_url, throwaway_postgres  # noqa: E402
from tests.processes import free_port, running  # noqa: E402


def _serve(port: int, env: dict[str, str], log: Path):  # noqa: ANN202
    return running(["-m", "exemplar", "serve", "--port", str(port)], f"http://127.0.0.1:{port}/readyz", log, env=env)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=60)
    parser.add_argument("--build-rows", type=int, default=40_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out: dict = {"machine": "2 cores shared by PostgreSQL, two servers and the client"}
    with throwaway_postgres() as server, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {"EXEMPLAR_CATALOG_URL": schema_url(server), "EXEMPLAR_DATA_DIR": str(root / "data"),
               "EXEMPLAR_LEASE_S": "2", "EXEMPLAR_LOG_LEVEL": "warning", "EXEMPLAR_SOURCE_ROOTS": json.dumps([tmp])}
        a_port, b_port = free_port(), free_port()
        a, b = f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"
        with _serve(a_port, env, root / "a.log") as proc_a, _serve(b_port, env, root / "b.log"), \
                httpx.Client(timeout=30) as http:
            http.post(f"{a}/v1/pools", json={"name": "p", "encoder": "precomputed:8"}).raise_for_status()
            visible = []
            for n in range(args.writes):
                item = {"id": f"i{n}", "label": "xy"[n % 2], "embedding": np.random.default_rng(n).normal(size=8).tolist()}
                http.post(f"{a}/v1/pools/p/items", json={"items": [item]}).raise_for_status()
                started = time.perf_counter()
                deadline = started + 10
                while time.perf_counter() < deadline:  # bounded poll of the other replica
                    r = http.post(f"{b}/v1/pools/p/select", json={"query": {"item_id": f"i{n}"}, "k": 1})
                    if r.status_code == 200 or (n == 0 and r.status_code == 409):
                        if r.status_code == 200:
                            break
                    time.sleep(0.002)
                visible.append(time.perf_counter() - started)
            ms = np.asarray(visible) * 1000
            out["write_to_visible_ms"] = {"writes": len(ms), "p50": round(float(np.percentile(ms, 50)), 1),
                                          "p99": round(float(np.percentile(ms, 99)), 1),
                                          "max": round(float(ms.max()), 1)}
            manifest = root / "build.jsonl"
            rng = np.random.default_rng(0)
            with manifest.open("w") as f:
                for i in range(args.build_rows):
                    f.write(json.dumps({"id": f"b{i}", "label": f"c{i % 5}", "embedding": rng.normal(size=8).round(4).tolist()}) + "\n")
            http.post(f"{a}/v1/pools", json={"name": "big", "encoder": "precomputed:8"}).raise_for_status()
            job = http.post(f"{a}/v1/pools/big/builds", json={"source": str(manifest), "shard_size": 2000}).json()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                progress = http.get(f"{a}/v1/jobs/{job['id']}").json()["progress"]
                if progress.get("shards_done", 0) >= 2:
                    break
                time.sleep(0.05)
            proc_a.kill()
            killed = time.perf_counter()
            deadline = time.monotonic() + 120
            state = None
            while time.monotonic() < deadline:
                record = http.get(f"{b}/v1/jobs/{job['id']}").json()
                state = record["state"]
                if state in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.05)
            versions = http.get(f"{b}/v1/pools/big").json()
            out["takeover"] = {"lease_s": 2, "build_rows": args.build_rows, "state": state,
                               "kill_to_finished_s": round(time.perf_counter() - killed, 2),
                               "resumed_shards": record.get("result", {}).get("resumed_shards") if record.get("result") else None,
                               "size": versions.get("size")}
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
