"""Precomputed Parquet and Arrow manifests read a column at a time build exactly what the row at a
time read builds from the same rows (the oracle): items, vectors, errors with their lines, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from exemplar.errors import InvalidRequest
from exemplar.retrieval import PoolService, build_pool
from exemplar.retrieval.build.runner import BuildReport, BuildRunner, BuildSpec
from exemplar.retrieval.store.items import check_vector, unit_rows
from exemplar.retrieval.build.sources import columnar_source, count_rows, detect_format, read_source
from tests.helpers import clustered_vectors

DIM = 8
NAN, INF = float("nan"), float("inf")


def manifest_rows(n: int = 60, seed: int = 3) -> list[dict[str, Any]]:
    """Clustered vectors, with a bad row of every kind the build reports (and ids reused across
    shards of 16 rows) among good ones."""
    V, labels, domains = clustered_vectors(n=n, dim=DIM, n_labels=3, n_domains=2, seed=seed)
    rows: list[dict[str, Any]] = [
        {"id": f"v{i:03d}", "label": labels[i], "domain": domains[i], "text": f"item {i}" if i % 3 else None,
         "metadata": json.dumps({"i": i}) if i % 4 == 0 else None, "embedding": V[i].tolist()}
        for i in range(n)
    ]
    good = V[0].tolist()

    def bad(i: int, **fields: Any) -> None:  # noqa: ANN401
        rows[i] = {**rows[i], **fields}

    bad(1, embedding=[NAN] + good[1:])
    bad(2, embedding=[0.0] * DIM)
    bad(3, embedding=good[:5])
    bad(4, embedding=[])
    bad(5, embedding=None)
    bad(6, embedding=[INF] + good[1:])
    bad(7, embedding=[-INF] + good[1:])
    bad(8, embedding=[1.0, None] + good[2:])
    bad(9, id=None)
    bad(10, id="")
    bad(11, id="bad\nid")
    bad(12, id="x" * 513)
    bad(13, id="v000")  # a duplicate of the first row
    bad(14, label="tab\tlabel")
    bad(15, domain="d" * 513)
    bad(16, text="t" * 20_001)
    bad(17, metadata="{not json")
    bad(18, metadata="[1, 2]")
    bad(19, metadata=json.dumps({"k": "\ud800"}))
    bad(20, label="")  # no label: not an error
    bad(21, id="bad\x7fid", embedding=None)  # the id is refused before the vector is looked at
    # a bad vector does not take its id: a later row of the same shard with it is still a duplicate,
    # one in a later shard is kept
    bad(22, id="again", embedding=[NAN] * DIM)
    bad(23, id="again")
    bad(40, id="again")
    bad(41, id="v030")  # a duplicate of a row in an earlier shard
    bad(42, embedding=[3e38, -3e38] + [1e-38] * (DIM - 2))  # huge and tiny values: scaled, not overflowed
    bad(43, embedding=[1e-45] + [0.0] * (DIM - 1))
    bad(44, id="v044", embedding=[3.0] * (DIM + 1))
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows))
    return path


def arrow_table(rows: list[dict[str, Any]], embedding: pa.DataType) -> pa.Table:
    columns: dict[str, Any] = {
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "label": pa.array([r["label"] for r in rows], pa.string()),
        "domain": pa.array([r["domain"] for r in rows], pa.large_string()),
        "text": pa.array([r["text"] for r in rows], pa.string()),
        "metadata": pa.array([r["metadata"] for r in rows], pa.string()),
    }
    if pa.types.is_fixed_size_list(embedding):  # every row has the pool's width (or is null)
        columns["embedding"] = pa.array([r["embedding"] if r["embedding"] is not None and len(r["embedding"]) == DIM
                                         else None for r in rows], embedding)
    else:
        columns["embedding"] = pa.array([r["embedding"] for r in rows], embedding)
    return pa.table(columns)


def write_table(table: pa.Table, path: Path) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=25)  # row groups that do not line up with shards
    elif path.suffix == ".feather":
        feather.write_feather(table, path)
    else:
        with pa.ipc.new_file(path, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=7):
                writer.write_batch(batch)
    return path


def contents(pools: PoolService, name: str) -> dict[str, Any]:
    snap = pools.snapshots.snapshot(name)
    rows = range(len(snap.ids))
    return {"ids": list(snap.ids), "vectors": np.asarray(snap.vectors).copy(),
            "labels": [snap.label_of(r) for r in rows], "domains": [snap.domain_of(r) for r in rows],
            "texts": [snap.texts[r] for r in rows], "metadata": [snap.metadata_of(r) for r in rows],
            "images": [snap.images[r] for r in rows]}


def assert_same_build(a: BuildReport, b: BuildReport, pools: PoolService, name_a: str, name_b: str) -> None:
    assert (a.added, a.skipped, a.shards, a.resumed_shards) == (b.added, b.skipped, b.shards, b.resumed_shards)
    assert a.errors == b.errors
    ca, cb = contents(pools, name_a), contents(pools, name_b)
    np.testing.assert_array_equal(ca.pop("vectors"), cb.pop("vectors"))
    assert ca == cb


class Quiet:
    fence = None  # no job

    def __init__(self, crash_after: int | None = None) -> None:
        self.checks = 0
        self.crash_after = crash_after
        self.reports: list[dict[str, Any]] = []

    def check(self) -> None:
        self.checks += 1
        if self.crash_after is not None and self.checks > self.crash_after:
            raise Crash()

    def progress(self, *, force: bool = False, **values: Any) -> None:  # noqa: ANN401
        self.reports.append(values)


class Crash(Exception):
    pass


def no_stage(*_: Any) -> None:  # noqa: ANN401
    pytest.fail("a column-wise build has no encode stage")


def run(pools: PoolService, name: str, source: Path, workdir: Path, *, columnar: bool = True,
        ctx: Quiet | None = None, shard_size: int = 16) -> BuildReport:
    """Build ``source`` into ``name``; read column-wise (checked: no encode stage) or a row at a time."""
    spec = BuildSpec(pool=name, source=str(source), shard_size=shard_size)
    return BuildRunner(pools.store, pools.snapshots, pools.encoders, spec, workdir, no_stage if columnar else None, columnar=columnar).run(ctx or Quiet())


EMBEDDINGS = {
    "list<float32>": (pa.list_(pa.float32()), ".parquet"),
    "list<float64>": (pa.list_(pa.float64()), ".parquet"),
    "large_list<float32>": (pa.large_list(pa.float32()), ".parquet"),
    "fixed_size_list<float32>": (pa.list_(pa.float32(), DIM), ".parquet"),
    "arrow list<float32>": (pa.list_(pa.float32()), ".arrow"),
    "feather fixed_size_list<float64>": (pa.list_(pa.float64(), DIM), ".feather"),
}


@pytest.mark.parametrize("kind", EMBEDDINGS)
def test_columnar_build_equals_the_jsonl_build(pools: PoolService, tmp_path: Path, kind: str) -> None:
    embedding, suffix = EMBEDDINGS[kind]
    rows = manifest_rows()
    if pa.types.is_fixed_size_list(embedding):  # a fixed width cannot say "too short": those rows have none
        rows = [dict(r, embedding=None) if r["embedding"] is not None and len(r["embedding"]) != DIM else r
                for r in rows]
    if pa.types.is_float32(embedding.value_type):  # the JSON holds the very numbers the column holds
        rows = [dict(r, embedding=np.asarray(r["embedding"], np.float32).tolist()) if r["embedding"] and
                None not in r["embedding"] else r for r in rows]
    source = write_table(arrow_table(rows, embedding), tmp_path / f"m{suffix}")
    assert columnar_source(source, detect_format(source)) is not None
    pools.create(name="jsonl", encoder=f"precomputed:{DIM}")
    pools.create(name="columns", encoder=f"precomputed:{DIM}")
    oracle = build_pool(pools.store, pools.snapshots, pools.encoders, "jsonl", write_jsonl(tmp_path / "m.jsonl", rows), shard_size=16)
    report = run(pools, "columns", source, tmp_path / "work")
    assert_same_build(oracle, report, pools, "jsonl", "columns")
    assert oracle.skipped >= 20 and oracle.added >= 35
    lines = {e.line: e for e in report.errors}
    assert lines[2].message == "embedding contains NaN or infinite values" and lines[2].item_id == "v001"
    assert lines[3].message == "embedding has zero length"
    assert lines[6].message == "precomputed pools need an 'embedding' per item"
    assert (lines[10].item_id, lines[10].message) == (None, "row has no 'id'")
    assert (lines[11].item_id, lines[11].message) == ("", "row has no 'id'")
    assert "control characters" in lines[12].message and "1 to 512" in lines[13].message
    assert lines[14].message.startswith("duplicate id") and lines[24].message.startswith("duplicate id")
    assert "Unicode" in lines[20].message and "control characters" in lines[22].message
    assert lines[9].message == "'embedding' must be a list of numbers"
    ids = contents(pools, "columns")["ids"]
    assert "again" in ids, "the id of a refused vector is free for a later shard"
    assert "v042" in ids and "v043" in ids, "huge and tiny values are scaled, not overflowed or underflowed"
    if not pa.types.is_fixed_size_list(embedding):
        assert lines[4].message == "embedding has 5 dimensions, the pool expects 8"


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_column_and_row_reads_of_one_file_agree(pools: PoolService, tmp_path: Path, suffix: str) -> None:
    source = write_table(arrow_table(manifest_rows(), pa.list_(pa.float32())), tmp_path / f"m{suffix}")
    pools.create(name="rows", encoder=f"precomputed:{DIM}")
    pools.create(name="columns", encoder=f"precomputed:{DIM}")
    oracle = run(pools, "rows", source, tmp_path / "w1", columnar=False)
    assert_same_build(oracle, run(pools, "columns", source, tmp_path / "w2"), pools, "rows", "columns")


def test_integer_ids_categorical_labels_and_no_other_columns(pools: PoolService, tmp_path: Path) -> None:
    V, labels, _ = clustered_vectors(n=30, dim=DIM, n_labels=2, n_domains=2, seed=1)
    table = pa.table({"id": pa.array([i % 25 for i in range(30)], pa.int64()),
                      "label": pa.array(labels).dictionary_encode(),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(V.ravel()), DIM)})
    source = write_table(table, tmp_path / "ints.parquet")
    assert columnar_source(source, "parquet") is not None
    pools.create(name="rows", encoder=f"precomputed:{DIM}")
    pools.create(name="columns", encoder=f"precomputed:{DIM}")
    oracle = run(pools, "rows", source, tmp_path / "w1", columnar=False, shard_size=7)
    report = run(pools, "columns", source, tmp_path / "w2", shard_size=7)
    assert_same_build(oracle, report, pools, "rows", "columns")
    assert report.added == 25 and [e.line for e in report.errors] == list(range(26, 31))
    assert contents(pools, "columns")["ids"][:3] == ["0", "1", "2"]


def test_a_crashed_columnar_build_resumes(pools: PoolService, tmp_path: Path) -> None:
    source = write_table(arrow_table(manifest_rows(), pa.list_(pa.float32())), tmp_path / "m.parquet")
    pools.create(name="p", encoder=f"precomputed:{DIM}")
    pools.create(name="clean", encoder=f"precomputed:{DIM}")
    workdir = tmp_path / "work"
    with pytest.raises(Crash):
        run(pools, "p", source, workdir, ctx=Quiet(crash_after=2))
    assert sorted(p.name for p in workdir.glob("*.json")) == ["shard-000000.json", "shard-000001.json"]
    assert pools.get("p").current_version is None
    progress = Quiet()
    resumed = run(pools, "p", source, workdir, ctx=progress)
    assert (resumed.resumed_shards, resumed.shards) == (2, 4)
    clean = run(pools, "clean", source, tmp_path / "clean")
    assert resumed.errors == clean.errors and (resumed.added, resumed.skipped) == (clean.added, clean.skipped)
    a, b = contents(pools, "p"), contents(pools, "clean")
    np.testing.assert_array_equal(a.pop("vectors"), b.pop("vectors"))
    assert a == b
    last = progress.reports[-1]
    assert (last["done"], last["total"], last["shards_done"], last["resumed_shards"]) == (60, 60, 4, 2)
    assert last["encoded"] == clean.added and last["skipped"] == clean.skipped


def test_shards_of_either_read_and_of_the_row_layout_resume_each_other(pools: PoolService, tmp_path: Path) -> None:
    """A build killed while reading a row at a time (or by a version that wrote shards as rows)
    finishes column-wise, and the other way about: shards are cut and checked alike."""
    source = write_table(arrow_table(manifest_rows(), pa.list_(pa.float64())), tmp_path / "m.parquet")
    for name in ("oracle", "rows-then-columns", "columns-then-rows", "old-layout"):
        pools.create(name=name, encoder=f"precomputed:{DIM}")
    oracle = run(pools, "oracle", source, tmp_path / "oracle", columnar=False)
    for name, first, then in (("rows-then-columns", False, True), ("columns-then-rows", True, False),
                              ("old-layout", True, True)):
        workdir = tmp_path / name
        with pytest.raises(Crash):
            run(pools, name, source, workdir, columnar=first, ctx=Quiet(crash_after=3))
        if name == "old-layout":
            for path in workdir.glob("shard-*.json"):
                shard = json.loads(path.read_text())
                columns = shard.pop("columns")
                shard["rows"] = [dict(zip(columns, values)) for values in zip(*columns.values())]
                path.write_text(json.dumps(shard))
        report = run(pools, name, source, workdir, columnar=then)
        assert report.resumed_shards == 3
        assert report.errors == oracle.errors and report.added == oracle.added
        a, b = contents(pools, name), contents(pools, "oracle")
        np.testing.assert_array_equal(a.pop("vectors"), b.pop("vectors"))
        assert a == b


def test_text_that_is_not_utf8_is_the_rows_error_not_the_builds(pools: PoolService, tmp_path: Path) -> None:
    # A row read stops at such bytes (UnicodeDecodeError); the column-wise read refuses their row.
    ids = pa.Array.from_buffers(pa.string(), 3, pa.array([b"ok", b"\xed\xa0\x80", b"fine"], pa.binary()).buffers())
    labels = pa.Array.from_buffers(pa.string(), 3, pa.array([b"a", b"b", b"\xff"], pa.binary()).buffers())
    table = pa.table({"id": ids, "label": labels, "embedding": pa.array([[1.0] * DIM] * 3, pa.list_(pa.float32()))})
    source = write_table(table, tmp_path / "bytes.parquet")
    pools.create(name="p", encoder=f"precomputed:{DIM}")
    report = run(pools, "p", source, tmp_path / "work")
    assert report.added == 1 and contents(pools, "p")["ids"] == ["ok"]
    assert [(e.line, e.item_id, e.message) for e in report.errors] == [
        (2, None, "text is not valid Unicode (a lone surrogate)"),
        (3, "fine", "text is not valid Unicode (a lone surrogate)"),
    ]


@pytest.mark.parametrize("column, values", [
    ("image", ["a.png", None]),  # images: stored by the row read
    ("id", [1.0, 2.5]),  # a row read makes "1.0" of 1.0, an Arrow cast "1"
    ("label", [True, False]),  # refused per row by the row read
    ("embedding", ["[1, 0]", "[0, 1]"]),  # JSON text vectors
    ("embedding", [[True, False], [False, True]]),
])
def test_other_columns_are_read_a_row_at_a_time(pools: PoolService, tmp_path: Path, column: str,
                                                values: list[Any]) -> None:
    table = {"id": ["a", "b"], "embedding": [[1.0, 0.0], [0.0, 1.0]]}
    table[column] = values
    if column == "image":
        (tmp_path / "a.png").write_bytes(b"")
    source = write_table(pa.table(table), tmp_path / "m.parquet")
    assert columnar_source(source, "parquet") is None
    pools.create(name="p", encoder="precomputed:2")
    spec = BuildSpec(pool="p", source=str(source))
    report = BuildRunner(pools.store, pools.snapshots, pools.encoders, spec, tmp_path / "w1").run(Quiet())
    oracle = BuildRunner(pools.store, pools.snapshots, pools.encoders, spec, tmp_path / "w2", columnar=False).run(Quiet())
    assert (report.added, report.errors) == (oracle.added, oracle.errors)


def test_arrow_files_are_a_source_format(tmp_path: Path) -> None:
    table = pa.table({"id": ["a", "b", "c"], "embedding": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]})
    for name in ("m.arrow", "m.feather"):
        path = write_table(table, tmp_path / name)
        assert detect_format(path) == "arrow" and count_rows(path) == 3
        assert [r.item.id for r in read_source(path)] == ["a", "b", "c"]
    (tmp_path / "broken.arrow").write_bytes(b"not arrow")
    with pytest.raises(InvalidRequest, match="not a readable Arrow IPC file"):
        count_rows(tmp_path / "broken.arrow")


def test_unit_rows_is_check_vector_a_row_at_a_time() -> None:
    rng = np.random.default_rng(5)
    X = np.concatenate([rng.normal(size=(600, 16)) * 10.0 ** rng.integers(-300, 300, size=(600, 1)),
                        [[1e308, -1e308] + [0.0] * 14, [5e-324] + [0.0] * 15]])
    units, problems = unit_rows(X)
    assert problems == [None] * len(X)
    narrow = (rng.normal(size=(600, 16)) * 10.0 ** rng.integers(-30, 30, size=(600, 1))).astype(np.float32)
    np.testing.assert_array_equal(unit_rows(narrow)[0], unit_rows(narrow.astype(np.float64))[0],
                                  "float32 values widen exactly")
    for i, row in enumerate(X):
        np.testing.assert_array_equal(check_vector(row.tolist(), 16, param="e"), units[i])
    assert math.isclose(float(np.linalg.norm(units[-2])), 1.0, rel_tol=1e-6)
    _, problems = unit_rows(np.array([[NAN, 1.0], [0.0, -0.0], [INF, 1.0], [1.0, 2.0]]))
    assert problems == ["embedding contains NaN or infinite values", "embedding has zero length",
                        "embedding contains NaN or infinite values", None]
