"""Server memory across many small writes and a compaction (issue: anon RSS growth), on an existing
data directory built by ``exemplar build`` (e.g. writes.py's 1M x 512 clustered pool "hot").

Copies ``--source`` to ``--work`` (hard links for the immutable segment files, a real copy of the
catalog), starts `exemplar serve` on a free loopback port with ``--env K=V`` added to its
environment, then measures /proc/<pid>/status VmRSS / RssAnon / RssFile:

1. after start; after ``--queries`` topk and balanced selects (sequential);
2. after ``--writes`` style small writes (writes.py's mix: adds of 1, 100, 1000 items x ``--repeats``,
   deletes of 1000 x ``--repeats``, then ``--small-writes`` adds of 10), each followed by polling
   until visible (a select / GET sees it, so the new version is loaded), with a select load of
   ``--concurrency`` threads running meanwhile; then the queries again;
3. after ``POST /v1/pools/{pool}/compact`` (job waited for), then after the queries again.

With ``--debug`` the server gets EXEMPLAR_MEMDEBUG=1 and GET /debug/mem (allocator and Python
object facts) is recorded after each phase, after the RSS reading: that endpoint is not part of
Exemplar, it is the probe patch of the memory-probe investigation (apply it to a scratch worktree;
without it the record is a 404). ``--env EXEMPLAR_MALLOC_TUNING=off`` measures glibc's defaults. Every loop is bounded in count
and time. Prints and writes JSON (``--out``).

    python benchmarks/memory_writes.py --source /tmp/mem1m/data --work /tmp/mem1m/run --w /tmp/mem1m/W.npy \
        --q /tmp/mem1m/Q.npy --env MALLOC_ARENA_MAX=2 --out /tmp/mem1m/arena2.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from writes import POOL, Http, Server, select_body  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def copy_data(source: Path, work: Path) -> None:
    """Hard-link the data directory (segment files are written once and replaced by rename, never
    changed in place) and copy the SQLite catalog and its journal files for real."""
    if work.exists():
        shutil.rmtree(work)
    subprocess.run(["cp", "-al", str(source), str(work)], check=True)
    for f in work.glob("catalog.sqlite3*"):
        data = f.read_bytes()
        f.unlink()
        f.write_bytes(data)


def huge_mb(pid: int) -> float | None:
    """Anonymous memory in transparent huge pages (numpy asks for them on arrays of 4 MiB and more)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class Load(threading.Thread):
    """Topk selects from ``concurrency`` threads until stopped (bounded by count and time)."""

    def __init__(self, base: str, bodies: list[bytes], concurrency: int, max_s: float) -> None:
        super().__init__(daemon=True)
        self.base, self.bodies, self.concurrency, self.max_s = base, bodies, concurrency, max_s
        self.halt = threading.Event()
        self.count = 0
        self.errors = 0

    def _one(self, start: int) -> None:
        client = Http(self.base, timeout=120)
        deadline = time.monotonic() + self.max_s
        i = start
        while not self.halt.is_set() and time.monotonic() < deadline and self.count < 1_000_000:
            status, _ = client.request("POST", f"/v1/pools/{POOL}/select", self.bodies[i % len(self.bodies)])
            self.count += 1
            self.errors += status != 200
            i += self.concurrency
        client.close()

    def run(self) -> None:
        threads = [threading.Thread(target=self._one, args=(s,), daemon=True) for s in range(self.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def stop(self) -> dict:
        self.halt.set()
        self.join(timeout=180)
        return {"selects": self.count, "errors": self.errors}


def main() -> None:  # noqa: C901, PLR0915 - one sequence of phases
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a built data directory (not changed)")
    parser.add_argument("--work", type=Path, required=True, help="where to copy it (replaced)")
    parser.add_argument("--w", type=Path, required=True, help="held-out vectors to add (.npy)")
    parser.add_argument("--w-labels", type=Path, default=None, help="their class numbers (.npy)")
    parser.add_argument("--q", type=Path, required=True, help="queries (.npy)")
    parser.add_argument("--items", type=int, default=1_000_000, help="rows of the built pool (ids h0..)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--small-writes", type=int, default=100, help="adds of 10 items after the mix")
    parser.add_argument("--concurrency", type=int, default=4, help="select load threads during the writes")
    parser.add_argument("--no-compact", action="store_true")
    parser.add_argument("--env", action="append", default=[], help="K=V for the server's environment")
    parser.add_argument("--debug", action="store_true", help="record GET /debug/mem after each phase")
    parser.add_argument("--empty", action="store_true", help="also measure an empty server with the same env")
    parser.add_argument("--timeout-s", type=float, default=120, help="per write, until visible")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    t_all = time.monotonic()
    env = {"EXEMPLAR_REFRESH_S": "1.0", "EXEMPLAR_COMPACTION": "false"}
    for kv in args.env:
        key, _, value = kv.partition("=")
        env[key] = value
    if args.debug:
        env["EXEMPLAR_MEMDEBUG"] = "1"
    W = np.load(args.w, mmap_mode="r")
    w_labels = np.load(args.w_labels) if args.w_labels else np.zeros(len(W), np.int64)
    Q = np.load(args.q)[: args.queries]
    topk = [select_body(q, "topk", 10) for q in Q]
    balanced = [select_body(q, "balanced", 10) for q in Q]
    report: dict = {"env": {k: v for k, v in env.items()}, "phases": {}, "debug": {}}
    log = args.work.parent / f"{args.work.name}.log"
    if args.empty:
        (args.work.parent / f"{args.work.name}-empty").mkdir(exist_ok=True)
        empty = Server(args.work.parent / f"{args.work.name}-empty", log, env, ROOT)
        time.sleep(1)
        report["phases"]["empty_server"] = empty.mem()
        empty.stop()
    copy_data(args.source, args.work)
    server = Server(args.work, log, env, ROOT)
    client = Http(server.base, timeout=300)

    def measure(phase: str) -> None:
        report["phases"][phase] = dict(server.mem(), AnonHugePages=huge_mb(server.proc.pid),
                                       t_s=round(time.monotonic() - t_all, 1))
        print(phase, report["phases"][phase], flush=True)
        if args.debug:
            status, data = client.json("GET", "/debug/mem")
            report["debug"][phase] = data if status == 200 else {"status": status}

    def queries(phase: str) -> None:
        """The topk then the balanced selects, one at a time; their p50 / p99 ms go in the report."""
        for strategy, bodies in (("topk", topk), ("balanced", balanced)):
            ms = []
            for body in bodies:
                t0 = time.perf_counter()
                status, _ = client.request("POST", f"/v1/pools/{POOL}/select", body)
                ms.append((time.perf_counter() - t0) * 1000)
                if status != 200:
                    raise SystemExit(f"select answered {status}")
            report.setdefault("select_c1_ms", {}).setdefault(phase, {})[strategy] = {
                "p50": round(float(np.percentile(ms, 50)), 2), "p99": round(float(np.percentile(ms, 99)), 2)}
        print(phase, "select c=1 ms", report["select_c1_ms"][phase], flush=True)

    try:
        measure("after_start")
        queries("first")
        measure("after_queries")
        ops: list[dict] = []
        j = 0
        for size in (1, 100, 1000):
            for _ in range(args.repeats):
                ops.append({"kind": "add", "start": j, "count": size})
                j += size
        rng = np.random.default_rng(7)
        rows = rng.choice(args.items, args.repeats * 1000, replace=False)
        for r in range(args.repeats):
            ops.append({"kind": "delete", "ids": [f"h{i}" for i in sorted(rows[r * 1000:(r + 1) * 1000].tolist())]})
        for _ in range(args.small_writes):
            ops.append({"kind": "add", "start": j, "count": 10})
            j += 10
        if j > len(W):
            raise SystemExit(f"--w holds {len(W)} vectors, the writes need {j}")
        load = Load(server.base, topk, args.concurrency, 3600)
        load.start()
        t0 = time.monotonic()
        slow = 0
        for op in ops:
            deadline = time.monotonic() + args.timeout_s
            if op["kind"] == "add":
                s, n = op["start"], op["count"]
                body = json.dumps({"items": [{"id": f"w{i}", "label": f"class-{int(w_labels[i])}",
                                              "embedding": W[i].round(6).tolist()} for i in range(s, s + n)]}).encode()
                status, data = client.request("POST", f"/v1/pools/{POOL}/items", body)
                if status != 201:
                    raise SystemExit(f"add answered {status}: {data[:300]!r}")
                probe = select_body(np.asarray(W[s + n - 1]), "topk", 1)
                last = f"w{s + n - 1}"
                for _ in range(100_000):
                    status, data = client.request("POST", f"/v1/pools/{POOL}/select", probe)
                    if status == 200 and json.loads(data)["demonstrations"][0]["id"] == last:
                        break
                    if time.monotonic() > deadline:
                        slow += 1
                        break
                    time.sleep(0.01)
            else:
                status, data = client.request("POST", f"/v1/pools/{POOL}/items/delete", json.dumps({"ids": op["ids"]}).encode())
                if status != 200:
                    raise SystemExit(f"delete answered {status}: {data[:300]!r}")
                for _ in range(100_000):
                    if client.request("GET", f"/v1/pools/{POOL}/items/{quote(op['ids'][-1], safe='')}")[0] == 404:
                        break
                    if time.monotonic() > deadline:
                        slow += 1
                        break
                    time.sleep(0.01)
        report["writes"] = {"n": len(ops), "items_added": j, "seconds": round(time.monotonic() - t0, 1),
                            "not_visible_in_time": slow, "load": load.stop()}
        print("writes", report["writes"], flush=True)
        measure("after_writes")
        queries("after_writes")
        measure("after_writes_and_queries")
        _, pool = client.json("GET", f"/v1/pools/{POOL}")
        report["pool_after_writes"] = {"size": pool.get("size"), "version": pool.get("current_version")}
        if not args.no_compact:
            t0 = time.monotonic()
            status, job = client.json("POST", f"/v1/pools/{POOL}/compact")
            final = job
            for _ in range(10_000):
                if not isinstance(final, dict) or final.get("state") in ("succeeded", "failed", "cancelled"):
                    break
                if time.monotonic() - t0 > 1800:
                    break
                time.sleep(0.2)
                _, final = client.json("GET", f"/v1/jobs/{job['id']}")
            # the next select loads the compacted version
            client.request("POST", f"/v1/pools/{POOL}/select", topk[0])
            time.sleep(1.2)
            client.request("POST", f"/v1/pools/{POOL}/select", topk[0])
            report["compaction"] = {"status": status, "state": (final or {}).get("state"),
                                    "seconds": round(time.monotonic() - t0, 1),
                                    "merges": len(((final or {}).get("result") or {}).get("merges", []))}
            print("compaction", report["compaction"], flush=True)
            measure("after_compaction")
            queries("after_compaction")
            measure("after_compaction_and_queries")
    finally:
        client.close()
        server.stop()
    report["wall_s"] = round(time.monotonic() - t_all, 1)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
