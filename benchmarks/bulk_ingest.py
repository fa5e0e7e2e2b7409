"""Bulk ingestion: rows/s of a build's ingestion stage (reading, checking, scaling and writing the
shards) for a precomputed 512-d Parquet manifest, read a column at a time (now) and a row at a
time (the code at git HEAD, and today's row path forced with ``columnar=False``); the index build
after it is timed separately. Figures only.

Each measurement runs in a fresh process. The manifest is clustered 512-d float32 vectors with an
id, a label and a domain per row, written by pyarrow with its defaults (list<float>, snappy).
The pools index with Flat unless ``--index`` says otherwise: ``auto`` (what ``exemplar build``
creates) trains IVF2048 for 300k vectors, minutes on 2 cores, and is no part of ingestion.

    python benchmarks/bulk_ingest.py --out benchmarks/results/bulk_ingest.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

from common import write_json

ROOT = Path(__file__).resolve().parent.parent
DIM = 512


def make_manifest(path: Path, rows: int, seed: int = 0) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    labels, domains = rng.integers(0, 100, rows), rng.integers(0, 5, rows)
    label_centres = rng.normal(size=(100, DIM)).astype(np.float32)
    domain_centres = rng.normal(size=(5, DIM)).astype(np.float32)
    writer = None
    for start in range(0, rows, 50_000):  # in parts: the whole float64 noise would not be small
        part = slice(start, min(rows, start + 50_000))
        n = part.stop - part.start
        V = label_centres[labels[part]] + 0.7 * domain_centres[domains[part]] + 0.8 * rng.standard_normal(
            (n, DIM), dtype=np.float32)
        V /= np.linalg.norm(V, axis=1, keepdims=True)
        table = pa.table({
            "id": [f"item-{i:08d}" for i in range(part.start, part.stop)],
            "label": [f"class-{c}" for c in labels[part]],
            "domain": [f"domain-{d}" for d in domains[part]],
            "embedding": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * DIM),
                                                  pa.array(V.ravel())),
        })
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()
    return path


def head_code(folder: Path) -> Path:
    """The exemplar package as committed at HEAD (read-only use of git: an archive, unpacked)."""
    data = subprocess.run(["git", "archive", "HEAD", "exemplar"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def measure(code: Path, source: Path, mode: str, rows: int, shard_size: int, index: str | None) -> dict:
    """One build in a fresh process: ingestion until its last progress report, then (unless
    ``index`` is None) the index and the version write."""
    argv = [sys.executable, __file__, "--worker", str(code), str(source), mode, str(rows), str(shard_size),
            index or "-"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


class _StopBeforeIndex(Exception):
    pass


def worker(code: str, source: str, mode: str, rows: int, shard_size: int, index: str) -> None:
    sys.path.insert(0, code)
    import exemplar
    from exemplar.encoders import EncoderRegistry
    from exemplar.retrieval import PoolService, PoolStore, SnapshotCache
    from exemplar.retrieval.build.runner import BuildRunner, BuildSpec

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    shards = -(-rows // shard_size)
    marks: dict[str, float] = {}

    class Context:
        checks = 0

        def check(self) -> None:
            self.checks += 1
            if index == "-" and self.checks > shards:  # the check after the last shard
                marks["ingested"], marks["cpu"] = time.perf_counter(), cpu()
                raise _StopBeforeIndex()

        def progress(self, *, force: bool = False, **values: object) -> None:
            marks["ingested"], marks["cpu"] = time.perf_counter(), cpu()  # the last one follows the last shard

    data = Path(tempfile.mkdtemp(prefix="exemplar-bulk-"))
    store = PoolStore(data / "data")
    snapshots = SnapshotCache(store)
    pools = PoolService(store, snapshots, EncoderRegistry(device="cpu"))
    pools.create(name="bench", encoder=f"precomputed:{DIM}", index="Flat" if index == "-" else index)
    spec = BuildSpec(pool="bench", source=source, shard_size=shard_size)
    runner = BuildRunner(store, snapshots, pools.encoders, spec, data / "work", columnar=False) if mode == "row" else BuildRunner(
        store, snapshots, pools.encoders, spec, data / "work")
    started, cpu0 = time.perf_counter(), cpu()
    report = None
    try:
        report = runner.run(Context())
    except _StopBeforeIndex:
        pass
    ended = time.perf_counter()
    ingest_s = marks["ingested"] - started
    out = {"mode": mode, "code": str(Path(exemplar.__file__).parent.parent), "rows": rows,
           "ingest_s": round(ingest_s, 2), "ingest_rows_per_s": round(rows / ingest_s),
           "ingest_cpu_s": round(marks["cpu"] - cpu0, 2),
           # CPU seconds of all its threads: steadier than the clock while others use the machine
           "ingest_rows_per_cpu_s": round(rows / (marks["cpu"] - cpu0))}
    if report is not None:
        # index_s: from the last shard to the version (shards read back, index built, segments and
        # catalog written); faiss_build_s: the index build alone, as the version records it
        out.update(index_s=round(ended - marks["ingested"], 2), total_s=round(ended - started, 2), added=report.added,
                   index=report.index.get("factory"), faiss_build_s=report.index.get("build_s"))
    snapshots.close()
    store.close()
    shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000, help="rows of the column-wise runs")
    parser.add_argument("--before-rows", type=int, default=100_000,
                        help="rows of the row-at-a-time runs (about 10k rows/s: 300k would take minutes)")
    parser.add_argument("--repeats", type=int, default=5, help="ingest-only runs of the column-wise read")
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--index", default="Flat", help="the pools' index spec ('auto': as exemplar build)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="exemplar-bulk-bench-"))
    started = time.perf_counter()
    manifest = make_manifest(folder / "pool.parquet", args.rows)
    before = make_manifest(folder / "before.parquet", args.before_rows)
    generated_s = time.perf_counter() - started
    manifest_bytes = manifest.stat().st_size
    head = head_code(folder / "head")
    load = [os.getloadavg()[0]]
    runs = {
        "columnar_ingest": [measure(ROOT, manifest, "columnar", args.rows, args.shard_size, None)
                            for _ in range(args.repeats)],
        "columnar_full": measure(ROOT, manifest, "columnar", args.rows, args.shard_size, args.index),
        "head_row_path": measure(head, before, "head", args.before_rows, args.shard_size, args.index),
        "row_path_now": measure(ROOT, before, "row", args.before_rows, args.shard_size, args.index),
    }
    load.append(os.getloadavg()[0])
    shutil.rmtree(folder, ignore_errors=True)
    rates = [r["ingest_rows_per_s"] for r in runs["columnar_ingest"]] + [runs["columnar_full"]["ingest_rows_per_s"]]
    results = {
        "cpus": os.cpu_count(), "dim": DIM, "shard_size": args.shard_size, "index": args.index,
        "machine": "shared with other engineers' test runs; 1-minute load average at start and end below",
        "load_average_1m": [round(x, 2) for x in load],
        "manifest": {"rows": args.rows, "before_rows": args.before_rows, "bytes": manifest_bytes,
                     "generated_s": round(generated_s, 1)},
        "after_ingest_rows_per_s": {"median": round(statistics.median(rates)), "best": max(rates), "all": rates},
        "before_ingest_rows_per_s": runs["head_row_path"]["ingest_rows_per_s"],
        "runs": runs,
    }
    per_cpu = [r["ingest_rows_per_cpu_s"] for r in runs["columnar_ingest"]]
    print(f"ingestion, {args.rows} x {DIM} precomputed Parquet rows read column-wise: median "
          f"{results['after_ingest_rows_per_s']['median']} rows/s (runs: {rates}; rows per CPU second: {per_cpu})")
    full = runs["columnar_full"]
    print(f"  full build: ingest {full['ingest_s']} s, then index ({full['index']}) and version write "
          f"{full['index_s']} s (of which the index build {full['faiss_build_s']} s)")
    for name in ("head_row_path", "row_path_now"):
        r = runs[name]
        print(f"{name} ({r['rows']} rows): ingest {r['ingest_rows_per_s']} rows/s ({r['ingest_s']} s; "
              f"{r['ingest_rows_per_cpu_s']} rows per CPU second), index and version write {r['index_s']} s")
    print(f"load average (1 min) at start and end: {results['load_average_1m']}")
    write_json(args.out, results)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), sys.argv[7])
    else:
        main()
