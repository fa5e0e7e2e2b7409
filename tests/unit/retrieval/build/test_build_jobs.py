"""Builds as jobs: shards, progress, resume after a crash, cancellation, one build per pool."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from exemplar.errors import Conflict
from exemplar.retrieval import BuildService, BuildSpec, JobService, LocalShardEncoder, PoolService, build_pool
from exemplar.retrieval.build.runner import BuildRunner


def vector_manifest(path: Path, n: int, dim: int = 8, seed: int = 0, bad_every: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        if bad_every and i % bad_every == bad_every - 1:
            lines.append(json.dumps({"id": f"bad{i}", "embedding": [1.0, 2.0]}))
        else:
            lines.append(json.dumps({"id": f"v{i:05d}", "label": f"c{i % 3}", "embedding": rng.normal(size=dim).tolist()}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def jobs(pools: PoolService):
    service = JobService(pools.store.catalog)
    yield service
    service.close()


class Crash(Exception):
    pass


class CrashingStage:
    """Encodes like the local stage, then 'dies' before the shard numbered ``crash_at``."""

    def __init__(self, crash_at: int) -> None:
        self.crash_at = crash_at
        self.calls = 0

    def __call__(self, encoder, embed, precomputed, spec):  # noqa: ANN001, ANN204
        outer = self
        inner = LocalShardEncoder(encoder, embed, precomputed=precomputed, batch_size=spec.batch_size)

        class Stage:
            def encode(self, items):  # noqa: ANN001, ANN202
                if outer.calls == outer.crash_at:
                    raise Crash()
                outer.calls += 1
                return inner.encode(items)

            def close(self) -> None:
                inner.close()

        return Stage()


def test_build_job_reports_progress_and_writes_a_version(pools: PoolService, jobs: JobService, tmp_path: Path) -> None:
    pools.create(name="p", encoder="precomputed:8")
    manifest = vector_manifest(tmp_path / "m.jsonl", 50, bad_every=10)
    builds = BuildService(pools.store, pools.snapshots, pools.encoders, jobs)
    job = jobs.wait(builds.start(BuildSpec(pool="p", source=str(manifest), shard_size=12)).id)
    assert job.state == "succeeded", job.errors
    result = job.result
    assert (result["added"], result["skipped"], result["shards"], result["version"]) == (45, 5, 5, 1)
    assert {e["item_id"] for e in result["errors"]} == {f"bad{i}" for i in range(9, 50, 10)}
    assert job.progress["done"] == 50 and job.progress["total"] == 50 and job.progress["encoded"] == 45
    assert job.progress["skipped"] == 5 and job.progress["shards_done"] == 5
    assert result["index"]["factory"] == "Flat" and result["index"]["recall_at_k"] == 1.0
    assert not (pools.store.data_dir / "builds" / job.id).exists(), "the work folder goes once the version is written"
    assert pools.stats("p").size == 45


def test_a_crashed_build_resumes_from_its_last_shard(pools: PoolService, tmp_path: Path) -> None:
    pools.create(name="p", encoder="precomputed:8")
    manifest = vector_manifest(tmp_path / "m.jsonl", 40)
    spec = BuildSpec(pool="p", source=str(manifest), shard_size=10)
    workdir = tmp_path / "work"
    stage = CrashingStage(crash_at=2)
    with pytest.raises(Crash):
        BuildRunner(pools.store, pools.snapshots, pools.encoders, spec, workdir, stage).run(_Quiet())
    assert sorted(p.name for p in workdir.glob("*.json")) == ["shard-000000.json", "shard-000001.json"]
    assert pools.get("p").current_version is None, "a broken build never touches the serving version"
    report = BuildRunner(pools.store, pools.snapshots, pools.encoders, spec, workdir, CrashingStage(crash_at=99)).run(_Quiet())
    assert (report.resumed_shards, report.shards, report.added) == (2, 4, 40)
    resumed = np.asarray(pools.snapshots.snapshot("p").vectors).copy()
    resumed_ids = pools.snapshots.snapshot("p").ids
    clean = build_pool(pools.store, pools.snapshots, pools.encoders, "p", manifest, shard_size=10)
    assert clean.version == 2 and pools.snapshots.snapshot("p").ids == resumed_ids
    np.testing.assert_array_equal(np.asarray(pools.snapshots.snapshot("p").vectors), resumed)


def test_cancelling_a_build(pools: PoolService, jobs: JobService, tmp_path: Path) -> None:
    pools.create(name="p", encoder="precomputed:8")
    manifest = vector_manifest(tmp_path / "m.jsonl", 200)
    gate = threading.Event()

    class SlowStage:
        def __call__(self, encoder, embed, precomputed, spec):  # noqa: ANN001, ANN204
            inner = LocalShardEncoder(encoder, embed, precomputed=precomputed)

            class Stage:
                def encode(self, items):  # noqa: ANN001, ANN202
                    gate.wait(5)
                    return inner.encode(items)

                def close(self) -> None:
                    inner.close()

            return Stage()

    builds = BuildService(pools.store, pools.snapshots, pools.encoders, jobs, stage=SlowStage())
    job = builds.start(BuildSpec(pool="p", source=str(manifest), shard_size=10))
    with pytest.raises(Conflict, match="already has a build running"):
        builds.start(BuildSpec(pool="p", source=str(manifest)))
    jobs.cancel(job.id)
    gate.set()
    final = jobs.wait(job.id)
    assert final.state == "cancelled"
    assert pools.get("p").current_version is None
    assert not (pools.store.data_dir / "builds" / job.id).exists()
    again = jobs.wait(builds.start(BuildSpec(pool="p", source=str(manifest), shard_size=50)).id)
    assert again.state == "succeeded" and again.result["added"] == 200


def test_recovery_resumes_builds_of_dead_processes(pools: PoolService, jobs: JobService, tmp_path: Path) -> None:
    pools.create(name="p", encoder="precomputed:8")
    manifest = vector_manifest(tmp_path / "m.jsonl", 30)
    spec = BuildSpec(pool="p", source=str(manifest), shard_size=10)
    job_id = "deadbeef"
    with pools.store.catalog.transaction() as conn:
        conn.execute("INSERT INTO jobs (id, kind, pool, state, params, pid, created_at) VALUES (?,?,?,?,?,?,?)",
                     (job_id, "build", "p", "running", json.dumps(spec.to_params()), 999_999_999, 0))
    with pytest.raises(Crash):
        BuildRunner(pools.store, pools.snapshots, pools.encoders, spec, pools.store.data_dir / "builds" / job_id, CrashingStage(crash_at=1)).run(_Quiet())
    builds = BuildService(pools.store, pools.snapshots, pools.encoders, jobs)
    assert jobs.recover({"build": builds.work}) == [job_id]
    job = jobs.wait(job_id)
    assert job.state == "succeeded" and job.result["resumed_shards"] == 1 and job.result["added"] == 30
    assert jobs.recover({"build": builds.work}) == [], "a finished job is not resumed again"


class _Quiet:
    fence = None  # no job

    def check(self) -> None:
        return None

    def progress(self, **values) -> None:  # noqa: ANN003
        return None


class _Recording(_Quiet):
    """Keeps every progress report, including those a job's context would not write."""

    def __init__(self) -> None:
        self.reports: list[dict] = []

    def progress(self, **values) -> None:  # noqa: ANN003
        values.pop("force", None)
        self.reports.append(values)


def assert_progress_settles(reports: list[dict], rows: int) -> None:
    assert all(r["eta_s"] is None or r["eta_s"] >= 0 for r in reports), reports
    assert all(r["total"] is None or r["done"] <= r["total"] for r in reports), reports
    assert (reports[-1]["done"], reports[-1]["total"], reports[-1]["eta_s"]) == (rows, rows, 0.0)


@pytest.mark.parametrize("layout", ["no final newline", "blank lines"])
def test_progress_of_manifests_with_irregular_lines(pools: PoolService, jobs: JobService, tmp_path: Path,
                                                   layout: str) -> None:
    pools.create(name="p", encoder="precomputed:8")
    pools.create(name="q", encoder="precomputed:8")
    lines = vector_manifest(tmp_path / "m.jsonl", 25).read_text().splitlines()
    text = "\n".join(lines) if layout == "no final newline" else "\n".join([*lines[:7], "", "  ", *lines[7:], ""])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(text)
    recorder = _Recording()
    BuildRunner(pools.store, pools.snapshots, pools.encoders, BuildSpec(pool="p", source=str(manifest), shard_size=10), tmp_path / "work").run(recorder)
    assert_progress_settles(recorder.reports, 25)
    job = jobs.wait(BuildService(pools.store, pools.snapshots, pools.encoders, jobs).start(BuildSpec(pool="q", source=str(manifest), shard_size=10)).id)
    assert job.state == "succeeded" and (job.progress["done"], job.progress["total"]) == (25, 25)


@pytest.mark.parametrize("counted", [5, 100, None], ids=["low", "high", "unknown"])
def test_progress_total_is_settled_by_the_rows_read(pools: PoolService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    counted: int | None) -> None:
    # A CSV row may span lines, so the up-front count is only an estimate.
    monkeypatch.setattr("exemplar.retrieval.build.runner.count_rows", lambda path, fmt=None: counted)
    pools.create(name="p", encoder="precomputed:8")
    manifest = vector_manifest(tmp_path / "m.jsonl", 25)
    recorder = _Recording()
    BuildRunner(pools.store, pools.snapshots, pools.encoders, BuildSpec(pool="p", source=str(manifest), shard_size=10), tmp_path / "work").run(recorder)
    assert_progress_settles(recorder.reports, 25)
