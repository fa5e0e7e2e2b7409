"""Per-request cost of select over HTTP: where search is negligible, what the server spends around it.

Builds a small pool (``--items`` x ``--dim`` seeded clustered vectors, ``precomputed`` encoder, as
``hotpath.py`` does), serves it with `exemplar serve` on a loopback port and drives it with
``hotpath``'s lean load generator: topk select at concurrency 1 and ``--concurrency`` with the query
vector as a JSON list (``embedding``) and as base64 float32 (``embedding_b64``), and select/batch
(64 queries a call) both ways. Each run is bounded by ``--seconds``. Reports latency p50, req/s (or
queries/s), the server process's CPU ms per request (``/proc/<pid>/stat`` utime+stime around the
run) and the load generator's CPU share of its wall time (the machine's cores are shared).

    python benchmarks/request_cost.py --out benchmarks/results/request_cost.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import free_port, wait_ready, write_json  # noqa: E402
from hotpath import LOADGEN, ROOT, clustered, pct  # noqa: E402

# hotpath's load generator, also reading the server's CPU time around its measured phase (after its
# warm-up), so the CPU per request divides by exactly the requests it counted.
_EDITS = (
    ("started, cpu_started = time.monotonic(), time.process_time()",
     "started, cpu_started, server_started = time.monotonic(), time.process_time(), server_cpu()"),
    ("elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_started",
     "elapsed, cpu, server = time.monotonic() - started, time.process_time() - cpu_started, server_cpu() - server_started"),
    ('"cpu_s": cpu,', '"cpu_s": cpu, "server_cpu_s": server,'),
)
SERVER_CPU = (
    "import os\n"
    "def server_cpu():\n"
    "    fields = open(f'/proc/{os.environ[\"SERVER_PID\"]}/stat').read().rsplit(')', 1)[1].split()\n"
    "    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')\n"
)
MEASURING_LOADGEN = LOADGEN
for _old, _new in _EDITS:
    assert _old in MEASURING_LOADGEN, f"hotpath's LOADGEN changed: {_old!r} not found"
    MEASURING_LOADGEN = MEASURING_LOADGEN.replace(_old, _new)
MEASURING_LOADGEN = SERVER_CPU + MEASURING_LOADGEN


def loadgen(base: str, path: str, bodies: Path, concurrency: int, seconds: float, server_pid: int) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURING_LOADGEN, base, path, str(bodies), str(concurrency),
                          str(seconds), "1000000"], capture_output=True, text=True, timeout=seconds + 120,
                         env=dict(os.environ, SERVER_PID=str(server_pid)))
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout)


def query(vector, form: str) -> dict:  # noqa: ANN001 - a float32 row
    if form == "b64":
        return {"embedding_b64": base64.b64encode(vector.astype("<f4").tobytes()).decode()}
    return {"embedding": vector.tolist()}  # float32 values: both forms carry the same numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--forms", default="json,b64")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder (pool, bodies, server log).")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from exemplar.encoders import EncoderRegistry
    from exemplar.retrieval import PoolService, PoolStore, SnapshotCache
    from exemplar.retrieval.store.catalog import ItemRow

    root = Path(tempfile.mkdtemp(prefix="exemplar-reqcost-"))
    V, labels = clustered(args.items + args.queries, args.dim, args.classes, seed=0)
    Q, V, labels = V[args.items:].copy(), V[: args.items], labels[: args.items]
    store = PoolStore(root / "data")
    snapshots = SnapshotCache(store)
    pools = PoolService(store, snapshots, EncoderRegistry())
    pools.create(name="hot", encoder=f"precomputed:{args.dim}", index="auto")
    rows = [ItemRow(-1, f"h{i}", f"class-{c}", None, None, None, None, None) for i, c in enumerate(labels.tolist())]
    store.write(pools.get("hot"), rows, V, bases=snapshots, source="request_cost", replace_all=True)
    index = store.catalog.versions(pools.get("hot").id)[-1].stats["index"]
    snapshots.close()
    store.close()

    forms = args.forms.split(",")
    bodies: dict[str, Path] = {}
    for form in forms:
        bodies[f"topk {form}"] = root / f"topk_{form}.jsonl"
        bodies[f"topk {form}"].write_text("".join(
            json.dumps({"query": query(q, form), "strategy": "topk", "k": args.k}) + "\n" for q in Q))
        bodies[f"batch {form}"] = root / f"batch_{form}.jsonl"
        bodies[f"batch {form}"].write_text("".join(
            json.dumps({"queries": [query(q, form) for q in Q[s:s + 64]], "strategy": "topk", "k": args.k}) + "\n"
            for s in range(0, len(Q) - 63, 64)))

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, EXEMPLAR_DATA_DIR=str(root / "data"), EXEMPLAR_LOG_LEVEL="warning", PYTHONPATH=str(ROOT))
    server = subprocess.Popen([sys.executable, "-m", "exemplar", "serve", "--port", str(port)], env=env,
                              stdout=open(root / "serve.log", "w"), stderr=subprocess.STDOUT)
    report: dict = {"items": args.items, "dim": args.dim, "k": args.k, "cpus": os.cpu_count(),
                    "index": index.get("factory"), "seconds": args.seconds, "runs": {}}
    try:
        wait_ready(f"{base}/readyz", timeout_s=300)
        plan = [(f"topk {form}", "/v1/pools/hot/select", c, 1) for form in forms for c in (1, args.concurrency)]
        plan += [(f"batch {form}", "/v1/pools/hot/select/batch", 2, 64) for form in forms]
        for name, path, c, per_call in plan:
            run = loadgen(base, path, bodies[name], c, args.seconds, server.pid)
            lat = run["latencies"]
            calls = len(lat)
            ok = run["statuses"].get("200", 0)
            entry = {
                "calls": calls, "statuses": run["statuses"], "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                "calls_per_s": round(calls / run["elapsed"], 1),
                "server_cpu_ms_per_call": round(1000 * run["server_cpu_s"] / max(1, calls), 3),
                "loadgen_cpu_share": round(run["cpu_s"] / run["elapsed"], 3),
            }
            if per_call > 1:
                entry["queries_per_s"] = round(calls * per_call / run["elapsed"], 1)
                entry["server_cpu_ms_per_query"] = round(entry["server_cpu_ms_per_call"] / per_call, 4)
            if ok != calls:
                entry["note"] = "not every call succeeded"
            report["runs"][f"{name} c={c}"] = entry
            print(f"{name} c={c}: {json.dumps(entry)}", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        if not args.keep:  # a few hundred MB a run
            shutil.rmtree(root, ignore_errors=True)
    print("\n| run | p50 ms | calls/s | queries/s | server CPU ms/call | loadgen CPU share |\n|---|---|---|---|---|---|")
    for name, e in report["runs"].items():
        print(f"| {name} | {e['p50_ms']} | {e['calls_per_s']} | {e.get('queries_per_s', e['calls_per_s'])} | "
              f"{e['server_cpu_ms_per_call']} | {e['loadgen_cpu_share']} |")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
