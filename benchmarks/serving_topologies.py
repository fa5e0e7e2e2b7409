"""One replica against two, and plain replicas against Ray Serve: select latency and throughput
from the outside, under wrk, over one PostgreSQL catalog and one data directory.

    python benchmarks/serving_topologies.py --out benchmarks/results/serving_topologies.json

Topologies, each measured in the same run on the same pool: one `exemplar serve` (direct, and
behind nginx), two behind nginx (round robin), and `exemplar serve --ray-serve` with 1 and 2
replicas (Serve's proxy). Per topology: topk at concurrency 1 (latency: the per-request overhead
is the difference of p50s), topk at concurrency 16 (throughput) and balanced at concurrency 1.
wrk is the load generator (C, one thread per run); its CPU share of the machine is reported beside
each figure. On this 2-core machine the servers, nginx, Ray, PostgreSQL and wrk share the cores:
two replicas cannot double one, and the ratios, not the absolute rates, carry over.
Needs Debian's wrk and nginx (apt-get install wrk nginx-light) and Ray Serve (the test extras).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.postgres import schema_url, throwaway_postgres  # noqa: E402
from tests.processes import free_port, running  # noqa: E402

LUA = """
math.randomseed(%(seed)d)
local n = %(n)d
request = function()
  local body = string.format('{"query": {"item_id": "i%%d"}, "strategy": "%(strategy)s", "k": %(k)d}', math.random(0, n - 1))
  return wrk.format("POST", "/v1/pools/bench/select", {["content-type"] = "application/json"}, body)
end
"""

NGINX = """
worker_processes 1;
daemon off;
pid %(root)s/nginx.pid;
error_log %(root)s/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %(root)s/body; proxy_temp_path %(root)s/proxy; fastcgi_temp_path %(root)s/fcgi;
  uwsgi_temp_path %(root)s/uwsgi; scgi_temp_path %(root)s/scgi;
  upstream exemplar { %(servers)s keepalive 64; }
  server {
    listen 127.0.0.1:%(port)d;
    location / {
      proxy_pass http://exemplar;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502 http_503;
    }
  }
}
"""


def _unit_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(url: str, script: Path, *, connections: int, duration_s: int) -> dict[str, float]:
    """One wrk run: requests/s, latency percentiles, errors, and wrk's own share of the CPUs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, timeout=duration_s + 30, check=True).stdout
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result: dict[str, float] = {"connections": connections,
                                "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
                                "generator_cpu_share": round(cpu / (wall * (os.cpu_count() or 1)), 3)}
    for q in ("50", "90", "99"):
        m = re.search(rf"^\s+{q}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        result[f"p{q}_ms"] = round(_unit_ms(*m.groups()), 3) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["non_2xx"] = int(m.group(1)) if m else 0
    result["socket_errors"] = sum(int(g) for g in errors.groups()) if errors else 0
    return result


@contextlib.contextmanager
def nginx(root: Path, ports: list[int]) -> Iterator[str]:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(NGINX % {"root": root, "port": port,
                             "servers": " ".join(f"server 127.0.0.1:{p};" for p in ports)})
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(root)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def measure(url: str, scripts: dict[str, Path], duration_s: int) -> dict[str, dict[str, float]]:
    wrk(url, scripts["topk"], connections=4, duration_s=2)  # warm: caches, connections, lazy imports
    return {"topk_c1": wrk(url, scripts["topk"], connections=1, duration_s=duration_s),
            "topk_c16": wrk(url, scripts["topk"], connections=16, duration_s=duration_s),
            "balanced_c1": wrk(url, scripts["balanced"], connections=1, duration_s=duration_s)}


def load_pool(base: str, n: int, dim: int, classes: int) -> None:
    """Clustered vectors (a centre per class plus noise), added in batches through the API."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dim))
    with httpx.Client(base_url=base, timeout=120) as http:
        http.post("/v1/pools", json={"name": "bench", "encoder": f"precomputed:{dim}"}).raise_for_status()
        for start in range(0, n, 1000):
            labels = rng.integers(0, classes, size=min(1000, n - start))
            vectors = centres[labels] + 0.6 * rng.normal(size=(len(labels), dim))
            items = [{"id": f"i{start + j}", "label": f"c{c}", "embedding": v.round(4).tolist()}
                     for j, (c, v) in enumerate(zip(labels, vectors))]
            http.post("/v1/pools/bench/items", json={"items": items}).raise_for_status()
        job = http.post("/v1/pools/bench/compact").json()["id"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and http.get(f"/v1/jobs/{job}").json()["state"] in ("queued", "running"):
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--duration", type=int, default=8, help="Seconds per wrk run.")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install wrk nginx-light)")
    out: dict = {"machine": f"{os.cpu_count()} cores shared by the servers, the proxies, Ray, PostgreSQL and wrk",
                 "pool": {"items": args.items, "dim": args.dim, "classes": 20, "k": 8}, "topologies": {}}
    with throwaway_postgres() as server, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {"EXEMPLAR_CATALOG_URL": schema_url(server), "EXEMPLAR_DATA_DIR": str(root / "data"),
               "EXEMPLAR_LOG_LEVEL": "warning"}
        scripts = {}
        for strategy in ("topk", "balanced"):
            scripts[strategy] = root / f"{strategy}.lua"
            scripts[strategy].write_text(LUA % {"seed": 7, "n": args.items, "strategy": strategy, "k": 8})
        ports = [free_port(), free_port()]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        plain = [["-m", "exemplar", "serve", "--port", str(p)] for p in ports]
        with running(plain[0], f"{urls[0]}/readyz", root / "a.log", env=env):
            load_pool(urls[0], args.items, args.dim, 20)
            out["topologies"]["plain_1_direct"] = measure(urls[0], scripts, args.duration)
            with nginx(root / "nginx1", ports[:1]) as proxy:
                out["topologies"]["plain_1_nginx"] = measure(proxy, scripts, args.duration)
            with running(plain[1], f"{urls[1]}/readyz", root / "b.log", env=env), \
                    nginx(root / "nginx2", ports) as proxy:
                out["topologies"]["plain_2_nginx"] = measure(proxy, scripts, args.duration)
        for replicas in (1, 2):
            port = free_port()
            command = ["-m", "exemplar", "serve", "--ray-serve", "--replicas", str(replicas), "--replica-cpus",
                       str(1 / replicas), "--port", str(port)]
            with running(command, f"http://127.0.0.1:{port}/readyz", root / f"ray{replicas}.log", env=env,
                         timeout_s=180):
                out["topologies"][f"ray_serve_{replicas}"] = measure(f"http://127.0.0.1:{port}", scripts, args.duration)
    t = out["topologies"]
    out["summary"] = {
        "ray_serve_overhead_ms_p50": round(t["ray_serve_1"]["topk_c1"]["p50_ms"] - t["plain_1_direct"]["topk_c1"]["p50_ms"], 3),
        "nginx_overhead_ms_p50": round(t["plain_1_nginx"]["topk_c1"]["p50_ms"] - t["plain_1_direct"]["topk_c1"]["p50_ms"], 3),
        "two_over_one_plain_rps": round(t["plain_2_nginx"]["topk_c16"]["rps"] / t["plain_1_nginx"]["topk_c16"]["rps"], 2),
        "two_over_one_ray_serve_rps": round(t["ray_serve_2"]["topk_c16"]["rps"] / t["ray_serve_1"]["topk_c16"]["rps"], 2),
        "ray_serve_2_over_plain_2_rps": round(t["ray_serve_2"]["topk_c16"]["rps"] / t["plain_2_nginx"]["topk_c16"]["rps"], 2),
        "failed_requests": sum(r["non_2xx"] + r["socket_errors"] for topo in t.values() for r in topo.values()),
    }
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
