"""Write benchmark (issue 12): latency to visible of API writes on a large served pool, against the
full-rewrite release it replaces and Milvus Lite.

On ``--items`` seeded clustered 512-d vectors (hotpath.py's generator, ``--classes`` classes) this
builds the pool once with `exemplar build` from a Parquet manifest (``precomputed:512``, ``index
auto``), serves it with `exemplar serve` on a free loopback port, and measures over HTTP from
separate load-generator processes (a write prober and a select load at concurrency 4):

1. latency to visible of adding 1, 100 and 1,000 items (from sending the write until GET of the
   last id answers 200 and a topk select by its vector returns it first; polled every 10 ms,
   bounded), and of the write request itself; p50/p99 over ``--repeats`` writes;
2. deleting 1,000 ids: until GET of the last id answers 404, then all 1,000 verified absent;
3. select topk p50/p99 (concurrency 4) with no writes, during the writes and during a compaction
   (``POST /v1/pools/{pool}/compact`` after the writes; its duration from the job record);
4. server RSS (VmRSS, with its anonymous and file-backed parts) against the raw vector bytes,
   after start, after the writes, after compaction, and an empty server's RSS;
5. cold start (process start to /readyz 200), after the build and again after compaction;
6. recall@10 of topk and of balanced's window against exact search (numpy, over the live
   vectors) on held-out queries: before the writes, after ``--recall-writes`` more writes of
   ``--recall-batch`` items, and after compaction;
7. rows/s of the initial bulk build (and of its ingestion part, derived from the build's report).

Side by side in the same run: the release before segments (``--old-tree``, a git worktree of it:
``git worktree add /tmp/oldtree e70a2f8``; every write copies the pool and rebuilds its indexes; add 1 and add 100 at ``--old-items``, ``--old-repeats`` each) and
Milvus Lite (same IVF layout as hotpath.py's peer: insert 1/100/1000 and delete 1000, until a
Strong-consistency search/query sees them). Writes JSON to ``--out`` and a markdown table next to
it (same name, ``.md``). Every loop is bounded in count and time; figures only, no assertions.

    python benchmarks/writes.py --items 20000 --repeats 3          # quick
    python benchmarks/writes.py --items 1000000 --old-items 300000 --out benchmarks/results/writes.json

Queries and added items are held-out draws of the pool's own mixture (class centre + sub-cluster +
noise, as in hotpath.py), never pool rows. ``--compaction off`` (the default here) keeps automatic
compaction out of the write measurements; ``POST .../compact`` merges only while the policy wants
it (a run of at least the merge factor of small segments, or a segment over 20% deleted).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from common import free_port, milvus_ivf_collection, write_json  # noqa: E402
from hotpath import clustered, pct  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POOL = "hot"


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- HTTP (lean, stdlib)


class Http:
    """One keep-alive HTTP/1.1 connection (stdlib): light on the shared CPU. A connection the server
    closed while idle is reopened once."""

    def __init__(self, base: str, timeout: float = 1800) -> None:
        parts = urlsplit(base)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, payload: object = None) -> tuple[int, object]:
        status, data = self.request(method, path, None if payload is None else json.dumps(payload).encode())
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode(errors="replace")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def select_body(vector: np.ndarray, strategy: str, k: int) -> bytes:
    return json.dumps({"query": {"embedding": vector.round(6).tolist()}, "strategy": strategy, "k": k}).encode()


# --------------------------------------------------------------------------- role: select load


async def _select_load(base: str, bodies_file: str, concurrency: int, stop_file: str, max_s: float) -> dict:
    parts = urlsplit(base)
    host, port = parts.hostname, parts.port
    path = f"/v1/pools/{POOL}/select"
    payloads = [line.strip().encode() for line in open(bodies_file) if line.strip()]
    requests = [b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(p)).encode() + b"\r\n\r\n" + p
                for p in payloads]
    samples: list[tuple[float, float, int]] = []
    stop = {"now": False}

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> int:
        writer.write(requests[i % len(requests)])
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        return int(head[9:12])

    async def worker(start: int, deadline: float) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        i = start
        try:
            while not stop["now"] and time.monotonic() < deadline and len(samples) < 2_000_000:
                wall, t0 = time.time(), time.perf_counter()
                try:
                    status = await asyncio.wait_for(exchange(reader, writer, i), 60)
                except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                    status = 0  # transport error
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                samples.append((wall, (time.perf_counter() - t0) * 1000, status))
                i += concurrency
        finally:
            writer.close()

    async def watch(deadline: float) -> None:
        while time.monotonic() < deadline and not os.path.exists(stop_file):
            await asyncio.sleep(0.05)
        stop["now"] = True

    started, cpu0 = time.monotonic(), cpu_s()
    deadline = started + max_s
    await asyncio.gather(watch(deadline), *(worker(s, deadline) for s in range(concurrency)))
    return {"samples": samples, "wall_s": time.monotonic() - started, "cpu_s": cpu_s() - cpu0}


def role_select_load(argv: list[str]) -> None:
    base, bodies, concurrency, stop_file, max_s, out = argv
    result = asyncio.run(_select_load(base, bodies, int(concurrency), stop_file, float(max_s)))
    Path(out).write_text(json.dumps(result))


class SelectLoad:
    """The select load in its own process, from start() until stop()."""

    def __init__(self, root: Path, base: str, bodies: Path, concurrency: int, name: str, max_s: float) -> None:
        self.stop_file = root / f"{name}.stop"
        self.out = root / f"{name}.json"
        self.stop_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, __file__, "--role", "select-load", base, str(bodies),
                                      str(concurrency), str(self.stop_file), str(max_s), str(self.out)])
        self.max_s = max_s

    def stop(self) -> dict:
        self.stop_file.touch()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise SystemExit("select load did not stop")
        if self.proc.returncode != 0:
            raise SystemExit(f"select load failed ({self.proc.returncode})")
        return json.loads(self.out.read_text())


def latency_summary(samples: list, since: float | None = None, until: float | None = None,
                    windows: list[tuple[float, float]] | None = None, inside: bool = True) -> dict:
    """p50/p99 of the select samples sent in [since, until), inside (or outside) the windows."""
    chosen = []
    for wall, ms, status in samples:
        if since is not None and wall < since or until is not None and wall >= until:
            continue
        if windows is not None:
            hit = any(a <= wall < b for a, b in windows)
            if hit != inside:
                continue
        chosen.append((ms, status))
    ok = [ms for ms, status in chosen if status == 200]
    span = None
    if chosen:
        walls = [w for w, _, _ in samples if (since is None or w >= since) and (until is None or w < until)]
        span = max(walls) - min(walls) if walls else None
    return {"requests": len(chosen), "errors": len(chosen) - len(ok), "p50_ms": pct(ok, 50), "p99_ms": pct(ok, 99),
            "rps": round(len(chosen) / span, 1) if span else None}


class FsyncProbe(threading.Thread):
    """Writes and fsyncs 4 KiB every 0.5 s next to the data directory: how slow the shared disk is
    while a phase runs (writes fsync their segment and deletion files)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.path = folder / "fsync-probe"
        self.samples: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set() and len(self.samples) < 100_000:
            t0 = time.perf_counter()
            with open(self.path, "wb") as fh:
                fh.write(os.urandom(4096))
                fh.flush()
                os.fsync(fh.fileno())
            self.samples.append((time.perf_counter() - t0) * 1000)
            self.halt.wait(0.5)

    def stop(self) -> dict:
        self.halt.set()
        self.join(timeout=30)
        return {"n": len(self.samples), "p50_ms": pct(self.samples, 50), "p99_ms": pct(self.samples, 99),
                "max_ms": round(max(self.samples), 1) if self.samples else None}


# --------------------------------------------------------------------------- role: write prober


def role_prober(argv: list[str]) -> None:
    """Runs the ops of a spec against a server and reports each op's timings (its own process)."""
    spec = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    client = Http(spec["base"])
    pool, mode, poll_s, timeout_s = spec["pool"], spec["mode"], spec["poll_s"], spec["timeout_s"]
    W = np.load(spec["vectors"], mmap_mode="r")
    w_labels = spec["labels"]
    results: list[dict] = []
    answers: dict[str, list] = {}
    started, cpu0 = time.monotonic(), cpu_s()

    def visible_add(item_id: str, probe: bytes) -> tuple[bool, int]:
        if mode != "old":  # the release before segments has no GET of an item
            status, _ = client.request("GET", f"/v1/pools/{pool}/items/{quote(item_id, safe='')}")
            if status != 200:
                return False, status
        status, data = client.request("POST", f"/v1/pools/{pool}/select", probe)
        if status != 200:
            return False, status
        demos = json.loads(data)["demonstrations"]
        return bool(demos) and demos[0]["id"] == item_id, status

    for op in spec["ops"]:
        if time.monotonic() - started > spec["budget_s"]:
            results.append({"tag": op["tag"], "skipped": "prober budget spent"})
            continue
        if op["kind"] == "add":
            j0, n = op["start"], op["count"]
            body = json.dumps({"items": [{"id": f"w{j}", "label": f"class-{w_labels[j]}",
                                          "embedding": W[j].round(6).tolist()} for j in range(j0, j0 + n)]}).encode()
            last = f"w{j0 + n - 1}"
            probe = json.dumps({"query": {"embedding": W[j0 + n - 1].round(6).tolist()}, "strategy": "topk",
                                "k": 1}).encode()
            wall, t0 = time.time(), time.perf_counter()
            status, data = client.request("POST", f"/v1/pools/{pool}/items", body)
            write_ms = (time.perf_counter() - t0) * 1000
            entry = {"tag": op["tag"], "kind": "add", "start": j0, "count": n, "t_wall": wall, "status": status,
                     "write_ms": round(write_ms, 2)}
            if status != 201:
                entry["error"] = data.decode(errors="replace")[:500]
                results.append(entry)
                continue
            polls, visible_ms = 0, None
            deadline = t0 + timeout_s
            while polls < 1_000_000:
                polls += 1
                seen, _ = visible_add(last, probe)
                if seen:
                    visible_ms = (time.perf_counter() - t0) * 1000
                    break
                if time.perf_counter() > deadline:
                    break
                time.sleep(poll_s)
            entry.update(visible_ms=None if visible_ms is None else round(visible_ms, 2), polls=polls,
                         t_wall_end=time.time())
            results.append(entry)
        elif op["kind"] == "delete":
            ids = op["ids"]
            body = json.dumps({"ids": ids}).encode()
            wall, t0 = time.time(), time.perf_counter()
            status, data = client.request("POST", f"/v1/pools/{pool}/items/delete", body)
            write_ms = (time.perf_counter() - t0) * 1000
            entry = {"tag": op["tag"], "kind": "delete", "count": len(ids), "t_wall": wall, "status": status,
                     "write_ms": round(write_ms, 2)}
            if status != 200:
                entry["error"] = data.decode(errors="replace")[:500]
                results.append(entry)
                continue
            reply = json.loads(data)
            entry["deleted"], entry["missing"] = len(reply.get("deleted", [])), len(reply.get("missing", []))
            polls, visible_ms = 0, None
            deadline = t0 + timeout_s
            sentinel = quote(ids[-1], safe="")
            while polls < 1_000_000:
                polls += 1
                if client.request("GET", f"/v1/pools/{pool}/items/{sentinel}")[0] == 404:
                    visible_ms = (time.perf_counter() - t0) * 1000
                    break
                if time.perf_counter() > deadline:
                    break
                time.sleep(poll_s)
            # Then every id: none may still answer 200 (a delete is one version, so none should).
            remaining = list(ids)
            sweeps = 0
            while remaining and sweeps < 100 and time.perf_counter() < deadline:
                sweeps += 1
                remaining = [i for i in remaining if client.request("GET", f"/v1/pools/{pool}/items/{quote(i, safe='')}")[0] != 404]
                if remaining:
                    time.sleep(poll_s)
            entry.update(visible_ms=None if visible_ms is None else round(visible_ms, 2), polls=polls,
                         all_gone_ms=round((time.perf_counter() - t0) * 1000, 2) if not remaining else None,
                         still_present_after_sentinel=len(remaining) if sweeps == 1 else None,
                         sweeps=sweeps, still_present=len(remaining), t_wall_end=time.time())
            results.append(entry)
        elif op["kind"] == "recall":
            Q = np.load(op["queries"])
            for strategy in op["strategies"]:
                got, lat, errors = [], [], 0
                for q in Q:
                    t0 = time.perf_counter()
                    status, data = client.request("POST", f"/v1/pools/{pool}/select", select_body(q, strategy, op["k"]))
                    lat.append((time.perf_counter() - t0) * 1000)
                    if status == 200:
                        got.append([d["id"] for d in json.loads(data)["demonstrations"]])
                    else:
                        errors += 1
                        got.append([])
                answers[f"{op['tag']}:{strategy}"] = got
                results.append({"tag": op["tag"], "kind": "recall", "strategy": strategy, "queries": len(Q),
                                "errors": errors, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)})
    client.close()
    wall = time.monotonic() - started
    out.write_text(json.dumps({"ops": results, "answers": answers, "wall_s": wall, "cpu_s": cpu_s() - cpu0}))


def run_prober(root: Path, name: str, spec: dict, timeout_s: float) -> dict:
    spec_file, out = root / f"{name}.spec.json", root / f"{name}.out.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, __file__, "--role", "prober", str(spec_file), str(out)], timeout=timeout_s)
    if proc.returncode != 0:
        raise SystemExit(f"prober {name} failed ({proc.returncode})")
    return json.loads(out.read_text())


def op_summary(ops: list[dict], tag: str) -> dict:
    chosen = [o for o in ops if o.get("tag") == tag and "skipped" not in o]
    ok = [o for o in chosen if o.get("visible_ms") is not None]
    visible = [o["visible_ms"] for o in ok]
    write = [o["write_ms"] for o in chosen if "write_ms" in o]
    out = {"n": len(chosen), "failed": len(chosen) - len(ok), "visible_p50_ms": pct(visible, 50),
           "visible_p99_ms": pct(visible, 99), "write_p50_ms": pct(write, 50), "write_p99_ms": pct(write, 99)}
    if chosen and chosen[0].get("kind") == "delete":
        gone = [o["all_gone_ms"] for o in chosen if o.get("all_gone_ms") is not None]
        out.update(all_verified_absent=sum(1 for o in chosen if o.get("still_present") == 0),
                   all_gone_p50_ms=pct(gone, 50),
                   present_after_sentinel=sum(o.get("still_present_after_sentinel") or 0 for o in chosen))
    errors = [o.get("error") for o in chosen if o.get("error")]
    if errors:
        out["errors"] = errors[:3]
    return out


# --------------------------------------------------------------------------- server processes


def mem_mb(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


class Server:
    """`exemplar serve` (this tree, or the old release) on a free loopback port."""

    def __init__(self, data_dir: Path, log: Path, env: dict, code: Path, timeout_s: float = 900) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ, EXEMPLAR_DATA_DIR=str(data_dir), EXEMPLAR_LOG_LEVEL="warning",
                        PYTHONPATH=str(code), **env)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "exemplar", "serve", "--port", str(self.port)],
                                     env=full_env, cwd=str(code), stdout=open(log, "w"), stderr=subprocess.STDOUT)
        self.ready_s = self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode} before /readyz")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return time.perf_counter() - self.started
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.02)
        raise SystemExit(f"server not ready within {timeout_s} s")

    def mem(self) -> dict:
        return mem_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def pool_state(base: str) -> dict:
    client = Http(base, timeout=120)
    status, stats = client.json("GET", f"/v1/pools/{POOL}")
    client.close()
    if status != 200 or not isinstance(stats, dict):
        return {"status": status}
    current = [v for v in stats.get("versions", []) if v.get("current")]
    index = (current[0].get("index_stats") or {}) if current else {}
    return {"size": stats.get("size"), "version": stats.get("current_version"), "segments": index.get("segments"),
            "index": index.get("factory")}


# --------------------------------------------------------------------------- data and exact search


def write_manifest(path: Path, V: np.ndarray, labels: np.ndarray, chunk: int = 50_000) -> None:
    """A Parquet manifest: id, label, embedding (list<float>), written in parts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    dim = V.shape[1]
    for s in range(0, len(V), chunk):
        e = min(len(V), s + chunk)
        table = pa.table({
            "id": [f"h{i}" for i in range(s, e)],
            "label": [f"class-{c}" for c in labels[s:e].tolist()],
            "embedding": pa.ListArray.from_arrays(pa.array(np.arange(e - s + 1, dtype=np.int32) * dim),
                                                  pa.array(np.ascontiguousarray(V[s:e]).ravel())),
        })
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()


def exact_truth(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], Q: np.ndarray, k: int, classes: int,
                chunk: int = 50_000) -> tuple[list[set], list[set]]:
    """Exact top-k (inner product, numpy) over the live vectors, and the exact balanced window: each
    class's k nearest, interleaved by `round_robin` (as hotpath.py defines it). ``parts`` are
    (vectors, codes, labels); codes name rows in the answers."""
    from exemplar.retrieval.index.classes import round_robin

    nq = len(Q)
    best_s, best_c = np.full((nq, 0), -np.inf, np.float32), np.zeros((nq, 0), np.int64)
    cls_s = [np.full((nq, 0), -np.inf, np.float32) for _ in range(classes)]
    cls_c = [np.zeros((nq, 0), np.int64) for _ in range(classes)]

    def merge(s_old: np.ndarray, c_old: np.ndarray, S: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if S.shape[1] > k:
            top = np.argpartition(-S, k - 1, axis=1)[:, :k]
            S, C = np.take_along_axis(S, top, 1), codes[top]
        else:
            C = np.broadcast_to(codes, S.shape)
        s_all, c_all = np.concatenate([s_old, S], 1), np.concatenate([c_old, C], 1)
        keep = np.argsort(-s_all, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(s_all, keep, 1), np.take_along_axis(c_all, keep, 1)

    for vectors, codes, labels in parts:
        for s in range(0, len(vectors), chunk):
            block = np.asarray(vectors[s:s + chunk], np.float32)
            S = Q @ block.T
            best_s, best_c = merge(best_s, best_c, S, codes[s:s + chunk])
            lab = labels[s:s + chunk]
            for c in range(classes):
                cols = np.flatnonzero(lab == c)
                if len(cols):
                    cls_s[c], cls_c[c] = merge(cls_s[c], cls_c[c], S[:, cols], codes[s:s + chunk][cols])
    topk = [set(best_c[q].tolist()) for q in range(nq)]
    balanced = [{code for code, _ in round_robin(
        [[(int(cls_c[c][q, j]), float(cls_s[c][q, j])) for j in range(cls_s[c].shape[1])] for c in range(classes)], k)}
        for q in range(nq)]
    return topk, balanced


def recall(answers: list[list[str]], truth: list[set], n_base: int, k: int) -> float | None:
    def code(item_id: str) -> int:
        return int(item_id[1:]) if item_id[0] == "h" else n_base + int(item_id[1:])

    hits = [len({code(i) for i in got} & want) for got, want in zip(answers, truth)]
    return round(sum(hits) / (len(hits) * k), 4) if hits else None


# --------------------------------------------------------------------------- Milvus Lite peer


def milvus_writes(V: np.ndarray, W: np.ndarray, root: Path, nlist: int, nprobe: int, adds: list[tuple[int, int]],
                  delete_sets: list[list[int]], poll_s: float, timeout_s: float, budget_s: float) -> dict | None:
    """Milvus Lite in-process, hotpath.py's collection layout (IVF_FLAT, IP, nlist/nprobe); inserts and
    deletes timed until a Strong-consistency search (top-1) and query see them."""
    made = milvus_ivf_collection(root, V, nlist)
    if made is None:
        return None
    client, bulk_s = made
    n = len(V)
    search_params = {"params": {"nprobe": nprobe}}
    ops: list[dict] = []
    deadline = time.monotonic() + budget_s
    j = 0
    for size, reps in adds:
        for _ in range(reps):
            if time.monotonic() > deadline:
                ops.append({"tag": f"add-{size}", "skipped": "milvus budget spent"})
                continue
            rows = [{"id": n + i, "vector": W[i].tolist()} for i in range(j, j + size)]
            last = n + j + size - 1
            probe = W[j + size - 1].tolist()
            j += size
            t0 = time.perf_counter()
            client.insert("hot", rows)
            write_ms = (time.perf_counter() - t0) * 1000
            visible_ms, polls = None, 0
            while polls < 100_000:
                polls += 1
                found = client.search("hot", data=[probe], limit=1, search_params=search_params,
                                      consistency_level="Strong")
                if found[0] and int(found[0][0]["id"]) == last and client.query(
                        "hot", filter=f"id in [{last}]", output_fields=["id"], consistency_level="Strong"):
                    visible_ms = (time.perf_counter() - t0) * 1000
                    break
                if time.perf_counter() - t0 > timeout_s:
                    break
                time.sleep(poll_s)
            ops.append({"tag": f"add-{size}", "kind": "add", "write_ms": round(write_ms, 2),
                        "visible_ms": None if visible_ms is None else round(visible_ms, 2), "polls": polls})
    for ids in delete_sets:
        if time.monotonic() > deadline:
            ops.append({"tag": "delete-1000", "skipped": "milvus budget spent"})
            continue
        t0 = time.perf_counter()
        client.delete("hot", ids=ids)
        write_ms = (time.perf_counter() - t0) * 1000
        visible_ms, polls = None, 0
        while polls < 100_000:
            polls += 1
            if not client.query("hot", filter=f"id in [{ids[-1]}]", output_fields=["id"], consistency_level="Strong"):
                visible_ms = (time.perf_counter() - t0) * 1000
                break
            if time.perf_counter() - t0 > timeout_s:
                break
            time.sleep(poll_s)
        left = client.query("hot", filter=f"id in {ids}", output_fields=["id"], consistency_level="Strong")
        ops.append({"tag": "delete-1000", "kind": "delete", "write_ms": round(write_ms, 2),
                    "visible_ms": None if visible_ms is None else round(visible_ms, 2), "polls": polls,
                    "still_present": len(left), "all_gone_ms": round((time.perf_counter() - t0) * 1000, 2)})
    client.close()
    try:  # Milvus Lite serves from a thread of this process: stop it, or it rewrites milvus.db at exit
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(root / "milvus.db"))
    except (ImportError, AttributeError):
        pass
    summary = {tag: op_summary(ops, tag) for tag in dict.fromkeys(o["tag"] for o in ops)}
    return {"bulk_insert_flush_load_s": round(bulk_s, 1), "bulk_rows_per_s": round(len(V) / bulk_s),
            "index": f"IVF_FLAT nlist {nlist} nprobe {nprobe}", "consistency": "Strong (search and query), no flush",
            "ops": summary, "raw": ops}


# --------------------------------------------------------------------------- main


def main() -> None:  # noqa: C901, PLR0915 - one script, one sequence of phases
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=None,
                        help="writes per size (default 20 for 1 and 100 items, 10 for 1000 items and deletes)")
    parser.add_argument("--queries", type=int, default=200, help="held-out queries for recall and the select load")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--refresh-s", type=float, default=1.0, help="EXEMPLAR_REFRESH_S of the server")
    parser.add_argument("--compaction", choices=["off", "on"], default="off",
                        help="EXEMPLAR_COMPACTION during the writes: off keeps the write path apart from merges and "
                        "leaves the small segments to the compaction triggered after them")
    parser.add_argument("--merge-factor", type=int, default=None, help="EXEMPLAR_COMPACTION_MERGE_FACTOR (default: the server's)")
    parser.add_argument("--select-concurrency", type=int, default=4)
    parser.add_argument("--baseline-s", type=float, default=5.0, help="select load with no writes before the compaction")
    parser.add_argument("--recall-writes", type=int, default=100)
    parser.add_argument("--recall-batch", type=int, default=10)
    parser.add_argument("--poll-s", type=float, default=0.01)
    parser.add_argument("--visible-timeout-s", type=float, default=120)
    parser.add_argument("--old-tree", type=Path, default=Path("/tmp/oldtree"))
    parser.add_argument("--old-items", type=int, default=None, help="pool size for the old release (default: --items)")
    parser.add_argument("--old-repeats", type=int, default=3)
    parser.add_argument("--milvus-budget-s", type=float, default=900)
    parser.add_argument("--peers", default="old,milvus")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "writes.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    wall0 = time.perf_counter()
    reps = {1: args.repeats or 20, 100: args.repeats or 20, 1000: args.repeats or 10}
    del_reps = args.repeats or 10
    n, dim, k = args.items, args.dim, args.k
    adds = [(size, reps[size]) for size in (1, 100, 1000)]
    new_latency = sum(s * r for s, r in adds)
    new_total = new_latency + args.recall_writes * args.recall_batch
    if del_reps * 1000 > n:
        raise SystemExit(f"{del_reps} x 1000 deletes need --items >= {del_reps * 1000}")
    root = Path(tempfile.mkdtemp(prefix="exemplar-writes-"))
    print(f"work folder {root}", flush=True)
    report: dict = {
        "items": n, "dim": dim, "classes": args.classes, "k": k, "cpus": os.cpu_count(),
        "code": f"{ROOT} (git {_git_head(ROOT)}, plus uncommitted changes if any)",
        "machine": "2 CPU cores shared with other engineers' work (test runs, builds): figures are indicative",
        "load_average_1m": [round(os.getloadavg()[0], 2)],
        "settings": {"EXEMPLAR_REFRESH_S": args.refresh_s, "EXEMPLAR_COMPACTION": args.compaction,
                     "EXEMPLAR_COMPACTION_MERGE_FACTOR": args.merge_factor or "server default (8)",
                     "select_load_concurrency": args.select_concurrency, "poll_s": args.poll_s,
                     "repeats": {"add-1": reps[1], "add-100": reps[100], "add-1000": reps[1000], "delete-1000": del_reps},
                     "recall_phase": f"{args.recall_writes} writes of {args.recall_batch} items",
                     "queries": args.queries, "workers": 1},
        "raw_vector_mb": round(n * dim * 4 / 2**20, 1),
    }
    raw_mb = n * dim * 4 / 2**20

    def mark(phase: str) -> None:
        """Seconds since the start and the 1-minute load average when ``phase`` ended (shared machine)."""
        report.setdefault("phases", {})[phase] = {"at_s": round(time.perf_counter() - wall0, 1),
                                                   "load_average_1m": round(os.getloadavg()[0], 2)}

    def save() -> None:
        report["wall_s"] = round(time.perf_counter() - wall0, 1)
        write_json(args.out, report)

    # One mixture: pool, held-out queries, and the items the writes add (none of them in the pool).
    t = time.perf_counter()
    data, all_labels = clustered(n + args.queries + new_total, dim, args.classes, seed=0)
    V, labels = data[:n], all_labels[:n]
    Q = data[n:n + args.queries].copy()
    W, w_labels = data[n + args.queries:].copy(), all_labels[n + args.queries:]
    np.save(root / "Q.npy", Q)
    np.save(root / "W.npy", W)
    (root / "selects.jsonl").write_text(b"\n".join(select_body(q, "topk", k) for q in Q).decode() + "\n")
    manifest = root / "pool.parquet"
    write_manifest(manifest, V, labels)
    report["data_s"] = round(time.perf_counter() - t, 1)
    mark("data")
    rng = np.random.default_rng(7)
    delete_rows = rng.choice(n, del_reps * 1000, replace=False)
    delete_sets = [sorted(delete_rows[i * 1000:(i + 1) * 1000].tolist()) for i in range(del_reps)]
    base_env = {"EXEMPLAR_REFRESH_S": str(args.refresh_s), "EXEMPLAR_COMPACTION": "true" if args.compaction == "on" else "false"}
    if args.merge_factor:
        base_env["EXEMPLAR_COMPACTION_MERGE_FACTOR"] = str(args.merge_factor)
    servers: list[Server] = []

    def serve(data_dir: Path, name: str, code: Path = ROOT, env: dict | None = None) -> Server:
        server = Server(data_dir, root / f"{name}.log", env if env is not None else base_env, code)
        servers.append(server)
        return server

    truth_cache: dict = {}

    def truth_for(added: set[int], deleted: set[int]) -> tuple[list[set], list[set]]:
        key = (len(added), len(deleted))
        if key not in truth_cache:
            alive = np.ones(n, bool)
            alive[sorted(deleted)] = False
            rows = np.flatnonzero(alive)
            new = np.array(sorted(added), np.int64)
            parts = [(V[rows], rows, labels[rows]), (W[new], n + new, w_labels[new])]
            truth_cache[key] = exact_truth(parts, Q, k, args.classes)
        return truth_cache[key]

    added: set[int] = set()
    deleted: set[int] = set()

    def apply(ops: list[dict]) -> None:
        for o in ops:
            if o.get("kind") == "add" and o.get("status") == 201:
                added.update(range(o["start"], o["start"] + o["count"]))

    def recall_of(result: dict, tag: str) -> dict:
        topk_truth, balanced_truth = truth_for(added, deleted)
        return {"topk": recall(result["answers"][f"{tag}:topk"], topk_truth, n, k),
                "balanced": recall(result["answers"][f"{tag}:balanced"], balanced_truth, n, k),
                "state": {"added": len(added), "deleted": len(deleted)},
                "select_c1_ms": {o["strategy"]: {"p50": o["p50_ms"], "p99": o["p99_ms"]} for o in result["ops"]
                                 if o.get("kind") == "recall"}}

    def spec(base: str, ops: list[dict], mode: str = "new", budget_s: float = 3600) -> dict:
        return {"base": base, "pool": POOL, "mode": mode, "vectors": str(root / "W.npy"), "labels": w_labels.tolist(),
                "poll_s": args.poll_s, "timeout_s": args.visible_timeout_s, "budget_s": budget_s, "ops": ops}

    recall_op = [{"tag": "recall", "kind": "recall", "queries": str(root / "Q.npy"), "k": k,
                  "strategies": ["topk", "balanced"]}]
    try:
        # 4. An empty server's RSS, for the difference.
        (root / "empty").mkdir()
        empty = serve(root / "empty", "empty")
        report["rss_mb"] = {"empty_server": empty.mem()}
        empty.stop()

        # 7. Bulk build.
        t = time.perf_counter()
        build = subprocess.run([sys.executable, "-m", "exemplar", "build", POOL, str(manifest), "--data-dir",
                                str(root / "data"), "--encoder", f"precomputed:{dim}", "--index", "auto"],
                               cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                               timeout=7200)
        build_wall = time.perf_counter() - t
        if build.returncode != 0:
            raise SystemExit(f"build failed:\n{build.stderr[-3000:]}")
        result = json.loads(build.stdout.strip().splitlines()[-1])
        index = result.get("index") or {}
        index_s = (index.get("build_s") or 0) + ((index.get("classes") or {}).get("build_s") or 0)
        rates = re.findall(r"([\d.]+)/s", build.stderr)
        report["build"] = {
            "rows": result.get("added"), "command_wall_s": round(build_wall, 1), "seconds": result.get("seconds"),
            "rows_per_s": round(result["added"] / result["seconds"]) if result.get("seconds") else None,
            "index_and_class_indexes_s": round(index_s, 1),
            "ingest_s_derived": round(result["seconds"] - index_s, 1) if result.get("seconds") else None,
            "ingest_rows_per_s_derived": round(result["added"] / max(result["seconds"] - index_s, 1e-9))
            if result.get("seconds") else None,
            "ingest_rate_last_progress_per_s": float(rates[-1]) if rates else None,
            "index": {key: index.get(key) for key in ("factory", "params", "recall_at_k", "build_s")},
            "class_indexes": {key: (index.get("classes") or {}).get(key) for key in ("approximate", "nprobe", "recall_at_k", "build_s")},
        }
        print(f"build: {report['build']}", flush=True)
        mark("build")
        save()

        # 5. Cold start, 4. RSS after start.
        server = serve(root / "data", "serve")
        report["cold_start_s"] = {"after_build": round(server.ready_s, 2)}
        report["rss_mb"]["after_start"] = server.mem()
        report["pool_after_build"] = pool_state(server.base)

        # 6. Recall before any write.
        first = run_prober(root, "recall0", spec(server.base, recall_op), 3600)
        report["recall_at_10"] = {"before_writes": recall_of(first, "recall")}
        report["rss_mb"]["after_start_and_recall_queries"] = server.mem()
        print(f"cold start {server.ready_s:.2f} s, recall before writes {report['recall_at_10']['before_writes']}", flush=True)

        # 1, 2, 3. Writes with the select load running.
        ops: list[dict] = []
        j = 0
        for size, r in adds:
            for _ in range(r):
                ops.append({"tag": f"add-{size}", "kind": "add", "start": j, "count": size})
                j += size
        for ids in delete_sets:
            ops.append({"tag": "delete-1000", "kind": "delete", "ids": [f"h{i}" for i in ids]})
        probe = FsyncProbe(root)
        probe.start()
        load = SelectLoad(root, server.base, root / "selects.jsonl", args.select_concurrency, "load-writes", 7200)
        warm_from = time.time() + 1.0  # the first second connects and warms up
        time.sleep(1.0 + args.baseline_s)
        writes = run_prober(root, "writes", spec(server.base, ops), 7200)
        load_result = load.stop()
        report["fsync_probe_4k"] = {"latency_writes": probe.stop()}
        apply(writes["ops"])
        for ids in delete_sets:
            deleted.update(ids)
        writes_from = min(o["t_wall"] for o in writes["ops"] if "t_wall" in o)
        writes_to = max(o.get("t_wall_end", o["t_wall"]) for o in writes["ops"] if "t_wall" in o)
        report["writes"] = {tag: op_summary(writes["ops"], tag) for tag in ("add-1", "add-100", "add-1000", "delete-1000")}
        report["writes_raw"] = writes["ops"]
        report["loadgen_cpu_share"] = {
            "write_prober": round(writes["cpu_s"] / writes["wall_s"], 3),
            "select_load_during_writes": round(load_result["cpu_s"] / load_result["wall_s"], 3),
        }
        jobs_client = Http(server.base, timeout=120)
        _, jobs = jobs_client.json("GET", f"/v1/jobs?pool={POOL}&limit=1000")
        compaction_windows = [(j_["started_at"], j_["finished_at"] or time.time()) for j_ in jobs["jobs"]
                              if j_["kind"] == "compact" and j_["started_at"]]
        report["select_c4"] = {
            "no_writes_before_writes": latency_summary(load_result["samples"], warm_from, writes_from),
            "during_writes": latency_summary(load_result["samples"], writes_from, writes_to, compaction_windows,
                                             inside=False),
        }
        if compaction_windows and args.compaction == "on":
            report["select_c4"]["during_writes_while_auto_compaction_ran"] = latency_summary(
                load_result["samples"], writes_from, writes_to, compaction_windows, inside=True)
            report["auto_compactions_during_writes"] = sum(1 for a, b in compaction_windows if a < writes_to)
        report["pool_after_latency_writes"] = pool_state(server.base)
        print(f"writes: {json.dumps(report['writes'])}\nselect: {json.dumps(report['select_c4'])}", flush=True)
        mark("latency writes")
        save()

        # 6. More writes, then recall.
        start = new_latency
        more = [{"tag": f"add-{args.recall_batch}", "kind": "add", "start": start + i * args.recall_batch,
                 "count": args.recall_batch} for i in range(args.recall_writes)]
        second = run_prober(root, "recall1", spec(server.base, more + recall_op), 7200)
        apply(second["ops"])
        report["writes"][f"add-{args.recall_batch} (recall phase, no select load)"] = op_summary(second["ops"], f"add-{args.recall_batch}")
        report["recall_at_10"]["after_writes"] = recall_of(second, "recall")
        report["pool_after_writes"] = pool_state(server.base)
        report["rss_mb"]["after_writes"] = server.mem()
        print(f"recall after writes {report['recall_at_10']['after_writes']}, pool {report['pool_after_writes']}", flush=True)
        mark("recall-phase writes")
        save()

        # 3. Compaction under the select load.
        probe = FsyncProbe(root)
        probe.start()
        load = SelectLoad(root, server.base, root / "selects.jsonl", args.select_concurrency, "load-compaction", 7200)
        warm_from = time.time() + 1.0
        time.sleep(1.0 + args.baseline_s)
        triggered = time.time()
        status, job = jobs_client.json("POST", f"/v1/pools/{POOL}/compact")
        final = job
        for _ in range(200_000):
            if not isinstance(final, dict) or final.get("state") in ("succeeded", "failed", "cancelled"):
                break
            if time.time() - triggered > 3600:
                break
            time.sleep(0.2)
            _, final = jobs_client.json("GET", f"/v1/jobs/{job['id']}")
        time.sleep(0.5 + args.baseline_s)  # and as long again with no writes and no compaction
        load_result = load.stop()
        report["fsync_probe_4k"]["compaction_phase"] = probe.stop()
        report["loadgen_cpu_share"]["select_load_during_compaction"] = round(load_result["cpu_s"] / load_result["wall_s"], 3)
        window = (final.get("started_at") or triggered, final.get("finished_at") or time.time())
        report["compaction"] = {
            "trigger_status": status, "state": final.get("state"),
            "job_duration_s": round(window[1] - window[0], 3) if final.get("finished_at") else None,
            "queued_s": round((final.get("started_at") or 0) - (final.get("created_at") or 0), 3),
            "merges": [{key: m.get(key) for key in ("merged", "into", "rows", "purged", "seconds")} for m in
                       (final.get("result") or {}).get("merges", [])],
            "errors": final.get("errors"),
        }
        for m in report["compaction"]["merges"]:
            m["merged"] = f"{len(m['merged'])} segments" if isinstance(m.get("merged"), list) else m.get("merged")
        report["select_c4"]["no_writes_before_compaction"] = latency_summary(load_result["samples"], warm_from, triggered)
        report["select_c4"]["during_compaction"] = latency_summary(load_result["samples"], window[0], window[1])
        report["select_c4"]["no_writes_after_compaction"] = latency_summary(load_result["samples"], window[1] + 0.5)
        report["pool_after_compaction"] = pool_state(server.base)
        report["rss_mb"]["after_compaction"] = server.mem()
        print(f"compaction {report['compaction']}\nselect {report['select_c4']}", flush=True)
        third = run_prober(root, "recall2", spec(server.base, recall_op), 3600)
        report["recall_at_10"]["after_compaction"] = recall_of(third, "recall")
        mark("compaction")
        jobs_client.close()
        server.stop()
        save()

        # 5. Cold start again, over the compacted pool.
        server = serve(root / "data", "serve2")
        report["cold_start_s"]["after_compaction_restart"] = round(server.ready_s, 2)
        report["rss_mb"]["after_restart"] = server.mem()
        server.stop()
        for key, value in list(report["rss_mb"].items()):
            if value.get("VmRSS"):
                value["x_raw_vectors"] = round(value["VmRSS"] / raw_mb, 3)
                value["minus_empty_x_raw"] = round((value["VmRSS"] - report["rss_mb"]["empty_server"]["VmRSS"]) / raw_mb, 3)
        report["rss_mb"]["empty_server"].pop("minus_empty_x_raw", None)
        save()

        # (a) The release before segments: every write copies the pool and rebuilds its indexes.
        peers: dict = {}
        report["peers"] = peers
        if "old" in args.peers and args.old_tree.is_dir():
            old_n = min(args.old_items or n, n)
            old_manifest = manifest
            if old_n != n:
                old_manifest = root / "old.parquet"
                write_manifest(old_manifest, V[:old_n], labels[:old_n])
            t = time.perf_counter()
            built = subprocess.run([sys.executable, "-m", "exemplar", "build", POOL, str(old_manifest), "--data-dir",
                                    str(root / "old-data"), "--encoder", f"precomputed:{dim}", "--index", "auto"],
                                   cwd=args.old_tree, env=dict(os.environ, PYTHONPATH=str(args.old_tree)),
                                   capture_output=True, text=True, timeout=7200)
            old_build_s = time.perf_counter() - t
            entry: dict = {"items": old_n, "code": f"{args.old_tree} (git {_git_head(args.old_tree)})",
                           "build_command_wall_s": round(old_build_s, 1)}
            if built.returncode != 0:
                entry["error"] = built.stderr[-2000:]
            else:
                old_result = json.loads(built.stdout.strip().splitlines()[-1])
                entry["build_rows_per_s"] = round(old_n / old_result["seconds"]) if old_result.get("seconds") else None
                entry["build_seconds"] = old_result.get("seconds")
                old = serve(root / "old-data", "old-serve", code=args.old_tree, env={"EXEMPLAR_REFRESH_S": str(args.refresh_s)})
                entry["cold_start_s"] = round(old.ready_s, 2)
                entry["rss_mb_after_start"] = old.mem()
                old_ops, j = [], 0
                for size in (1, 100):
                    for _ in range(args.old_repeats):
                        old_ops.append({"tag": f"add-{size}", "kind": "add", "start": j, "count": size})
                        j += size
                old_spec = spec(old.base, old_ops, mode="old")
                old_spec["timeout_s"] = 1800
                probe = FsyncProbe(root)
                probe.start()
                old_run = run_prober(root, "old", old_spec, 7200)
                report["fsync_probe_4k"]["old_release_writes"] = probe.stop()
                entry["writes"] = {tag: op_summary(old_run["ops"], tag) for tag in ("add-1", "add-100")}
                entry["visibility_check"] = "select top-1 only (the old release has no GET of an item)"
                entry["raw"] = old_run["ops"]
                entry["rss_mb_after_writes"] = old.mem()
                old.stop()
            peers["old release (full rewrite)"] = entry
            print(f"old release: {json.dumps(entry.get('writes'))}", flush=True)
            shutil.rmtree(root / "old-data", ignore_errors=True)
            mark("old release")
            save()

        # (b) Milvus Lite.
        if "milvus" in args.peers:
            factory = report["build"]["index"].get("factory") or ""
            nlist = int(factory[3:].split(",")[0]) if factory.startswith("IVF") else 1024
            nprobe = int((report["build"]["index"].get("params") or {}).get("nprobe", 16))
            milvus = milvus_writes(V, W, root, nlist, nprobe, adds, [[int(i) for i in ids] for ids in delete_sets],
                                   args.poll_s, args.visible_timeout_s, args.milvus_budget_s)
            if milvus is not None:
                peers["Milvus Lite (in-process)"] = milvus
                print(f"milvus: {json.dumps(milvus['ops'])}", flush=True)
            mark("milvus")
    finally:
        for server in servers:
            server.stop()
        report["load_average_1m"].append(round(os.getloadavg()[0], 2))
        save()
        if not args.keep:
            for _ in range(5):  # Milvus Lite's server process may still be writing milvus.db as it exits
                shutil.rmtree(root, ignore_errors=True)
                if not root.exists():
                    break
                time.sleep(2)
    markdown(report, args.out.with_suffix(".md"), " ".join(sys.argv[1:]))


def _git_head(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def markdown(report: dict, path: Path, argv: str) -> None:
    def ms(summary: dict | None, key: str = "visible") -> str:
        if not summary or not summary.get("n"):
            return "n/a"
        fmt = lambda v: "n/a" if v != v else (f"{v / 1000:.1f} s" if v >= 10_000 else f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms")  # noqa: E731
        failed = f" ({summary['failed']} of {summary['n']} not visible)" if summary.get("failed") else ""
        return f"{fmt(summary[f'{key}_p50_ms'])} / {fmt(summary[f'{key}_p99_ms'])}{failed}"

    peers = report.get("peers", {})
    old = peers.get("old release (full rewrite)", {})
    milvus = peers.get("Milvus Lite (in-process)", {})
    w = report.get("writes", {})
    n = report["items"]
    old_n = old.get("items")
    old_head = f"old release, full rewrite ({old_n:,} items)" if old_n else "old release"
    lines = [
        f"# Writes: {n:,} x {report['dim']} clustered, {report['classes']} classes",
        "",
        f"`python benchmarks/writes.py {argv}`; wall {report.get('wall_s')} s; {report['cpus']} CPU cores "
        f"**shared with other engineers' work** (1-minute load average at start/end: {report['load_average_1m']}); "
        f"settings {json.dumps(report['settings'])}. Pool index: {report.get('build', {}).get('index', {}).get('factory')} "
        f"{report.get('build', {}).get('index', {}).get('params')}; segments after the writes: "
        f"{report.get('pool_after_writes', {}).get('segments')}, after compaction: "
        f"{report.get('pool_after_compaction', {}).get('segments')}.",
        "",
        "Latency to visible p50 / p99 (write sent until GET of the last id is 200 and a topk select by its vector "
        "returns it first; for deletes until GET of the last id is 404, then all ids verified absent), with the write "
        "request's own p50 / p99 below it. Select load at concurrency "
        f"{report['settings']['select_load_concurrency']} during the exemplar writes.",
        "",
        f"| operation | exemplar (segments) | {old_head} | Milvus Lite (Strong) |",
        "|---|---|---|---|",
    ]
    for tag in ("add-1", "add-100", "add-1000", "delete-1000"):
        lines.append(f"| {tag}: visible | {ms(w.get(tag))} | {ms(old.get('writes', {}).get(tag))} | "
                     f"{ms(milvus.get('ops', {}).get(tag))} |")
        lines.append(f"| {tag}: write request | {ms(w.get(tag), 'write')} | {ms(old.get('writes', {}).get(tag), 'write')} | "
                     f"{ms(milvus.get('ops', {}).get(tag), 'write')} |")
    extra = [t for t in w if t.startswith("add-") and "recall" in t]
    for tag in extra:
        lines.append(f"| {tag}: visible | {ms(w[tag])} | | |")
    sel = report.get("select_c4", {})
    comp = report.get("compaction", {})
    lines += ["", "| select topk (k=10), concurrency 4 | p50 / p99 ms | requests | errors |", "|---|---|---|---|"]
    segments = {"no_writes_before_writes": report.get("pool_after_build", {}).get("segments"),
                "during_writes": f"{report.get('pool_after_build', {}).get('segments')} to "
                                 f"{report.get('pool_after_latency_writes', {}).get('segments')}",
                "no_writes_before_compaction": report.get("pool_after_writes", {}).get("segments"),
                "during_compaction": f"{report.get('pool_after_writes', {}).get('segments')} to "
                                     f"{report.get('pool_after_compaction', {}).get('segments')}",
                "no_writes_after_compaction": report.get("pool_after_compaction", {}).get("segments")}
    for key in ("no_writes_before_writes", "during_writes", "during_writes_while_auto_compaction_ran",
                "no_writes_before_compaction", "during_compaction", "no_writes_after_compaction"):
        s = sel.get(key)
        if s:
            lines.append(f"| {key.replace('_', ' ')} ({segments.get(key, '?')} segments) | {s['p50_ms']} / {s['p99_ms']} | "
                         f"{s['requests']} | {s['errors']} |")
    lines += ["", f"Compaction (POST /v1/pools/{POOL}/compact after the writes): state {comp.get('state')}, job "
              f"duration {comp.get('job_duration_s')} s, merges: {json.dumps(comp.get('merges'))}.", ""]
    rss = report.get("rss_mb", {})
    lines += [f"| server memory (raw vectors {report['raw_vector_mb']} MB) | VmRSS MB | x raw | (VmRSS - empty) x raw | RssAnon MB | RssFile MB |",
              "|---|---|---|---|---|---|"]
    for key, v in rss.items():
        lines.append(f"| {key.replace('_', ' ')} | {v.get('VmRSS')} | {v.get('x_raw_vectors', '')} | "
                     f"{v.get('minus_empty_x_raw', '')} | {v.get('RssAnon')} | {v.get('RssFile')} |")
    if old.get("rss_mb_after_start"):
        lines.append(f"| old release after start ({old_n:,} items) | {old['rss_mb_after_start'].get('VmRSS')} | "
                     f"{round(old['rss_mb_after_start'].get('VmRSS', 0) / (old_n * report['dim'] * 4 / 2**20), 3)} | | "
                     f"{old['rss_mb_after_start'].get('RssAnon')} | {old['rss_mb_after_start'].get('RssFile')} |")
    rec = report.get("recall_at_10", {})
    b = report.get("build", {})
    cold = report.get("cold_start_s", {})
    lines += ["", "| other | measured |", "|---|---|"]
    for key in ("before_writes", "after_writes", "after_compaction"):
        if key in rec:
            lines.append(f"| recall@{report['k']} topk / balanced window vs exact, {key.replace('_', ' ')} "
                         f"({rec[key]['state']['added']} added, {rec[key]['state']['deleted']} deleted) | "
                         f"{rec[key]['topk']} / {rec[key]['balanced']} (select c=1 p50 "
                         f"{rec[key].get('select_c1_ms', {}).get('topk', {}).get('p50')} / "
                         f"{rec[key].get('select_c1_ms', {}).get('balanced', {}).get('p50')} ms) |")
    lines += [
        f"| cold start to /readyz 200 (after build; after compaction, restart) | {cold.get('after_build')} s; "
        f"{cold.get('after_compaction_restart')} s (page cache warm) |",
        f"| bulk build `exemplar build` (Parquet, precomputed) | {b.get('rows_per_s')} rows/s ({b.get('rows')} rows in "
        f"{b.get('seconds')} s; index + class indexes {b.get('index_and_class_indexes_s')} s; ingestion part "
        f"~{b.get('ingest_rows_per_s_derived')} rows/s derived, last progress rate {b.get('ingest_rate_last_progress_per_s')}/s) |",
    ]
    if old:
        lines.append(f"| old release: cold start; bulk build ({old_n:,} items) | {old.get('cold_start_s')} s; "
                     f"{old.get('build_rows_per_s')} rows/s |")
    if milvus:
        lines.append(f"| Milvus Lite bulk insert + flush + load ({milvus.get('index')}) | {milvus.get('bulk_insert_flush_load_s')} s "
                     f"({milvus.get('bulk_rows_per_s')} rows/s) |")
    lines.append(f"| load generator CPU share (CPU time / wall) | {json.dumps(report.get('loadgen_cpu_share'))} |")
    lines.append(f"| shared disk: 4 KiB write + fsync every 0.5 s, per phase | {json.dumps(report.get('fsync_probe_4k'))} |")
    phases = "; ".join(f"{name}: {v['at_s']} s, {v['load_average_1m']}" for name, v in report.get("phases", {}).items())
    lines.append(f"| phases: ended at (s since start), 1-minute load average then | {phases} |")
    if old_n and old_n != n:
        lines += ["", f"**The old release was measured at {old_n:,} items, not {n:,}** (each of its writes rebuilds "
                  "the whole pool's indexes; at full size the run would take too long)."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        {"select-load": role_select_load, "prober": role_prober}[sys.argv[2]](sys.argv[3:])
    else:
        main()
