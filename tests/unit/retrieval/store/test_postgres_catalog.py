"""Replicas over one PostgreSQL catalog and one data directory, each a store of its own in this
process (its own connection and replica id): what one writes the other serves; concurrent writes
lose nothing; a job whose replica stopped is taken over, and the old worker's late commit is refused;
concurrent starts migrate once; retention keeps what a live replica serves."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from exemplar.encoders import EncoderRegistry
from exemplar.retrieval import JobService, NewItem, PoolStore
from exemplar.retrieval.store.catalog import Catalog, Fence, LeaseLost
from exemplar.retrieval.store.migrations import SCHEMA_VERSION
from tests.helpers import close_pools, open_pools
from tests.postgres import schema_url


@pytest.fixture
def url(postgres_server: str) -> str:
    return schema_url(postgres_server)


@pytest.fixture
def replicas(tmp_path: Path, url: str, encoders: EncoderRegistry) -> Iterator[tuple]:
    a = open_pools(tmp_path / "shared", encoders, catalog_url=url, lease_s=1.0)
    b = open_pools(tmp_path / "shared", encoders, catalog_url=url, lease_s=1.0)
    yield a, b
    close_pools(a)
    close_pools(b)


def _items(prefix: str, n: int, seed: int = 0) -> list[NewItem]:
    rng = np.random.default_rng(seed)
    return [NewItem(id=f"{prefix}{i}", label=f"c{i % 3}", embedding=rng.normal(size=8)) for i in range(n)]


def test_a_write_through_one_replica_is_served_by_the_other(replicas: tuple) -> None:
    a, b = replicas
    a.create(name="p", encoder="precomputed:8")
    a.add_items("p", _items("x", 20))
    assert b.snapshots.snapshot("p").size == 20
    a.add_items("p", _items("y", 5, seed=1))
    assert b.snapshots.refresh() == ["p"] and b.snapshots.snapshot("p").size == 25
    assert a.store.catalog.replica_id != b.store.catalog.replica_id
    assert {r.id for r in a.store.catalog.replicas()} >= {a.store.catalog.replica_id, b.store.catalog.replica_id}


def test_two_replicas_writing_at_once_lose_nothing(replicas: tuple) -> None:
    a, b = replicas
    a.create(name="p", encoder="precomputed:8")
    errors: list[BaseException] = []

    def writer(pools, prefix: str) -> None:  # noqa: ANN001
        try:
            for k in range(6):
                pools.add_items("p", _items(f"{prefix}{k}-", 3, seed=k))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(a, "a")), threading.Thread(target=writer, args=(b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    snap = b.snapshots.current("p", fresh=True)
    assert snap is not None and snap.size == 2 * 6 * 3


def test_a_job_of_a_stopped_replica_is_taken_over_and_the_late_commit_refused(replicas: tuple) -> None:
    a, b = replicas
    a.create(name="p", encoder="precomputed:8")
    cat_a, cat_b = a.store.catalog, b.store.catalog
    jobs_a = JobService(cat_a)
    gate, done = threading.Event(), threading.Event()

    def slow(ctx):  # noqa: ANN001, ANN202 - stands for a build whose replica stalls past its lease
        gate.wait(30)
        version, _ = cat_a.reserve_version(a.get("p").id, new_items=0, source="late")
        try:
            cat_a.commit_version(a.get("p").id, version, items=(), size=0, index="Flat", stats={}, activate=True,
                                 fence=ctx.fence)
        finally:
            done.set()
        return {}

    job = jobs_a.submit("build", "p", {}, slow)
    # replica a stops renewing (no keeper started): its lease runs out
    deadline = time.monotonic() + 20
    ran: list[Fence] = []
    jobs_b = JobService(cat_b)
    try:
        while not ran and time.monotonic() < deadline:
            time.sleep(0.3)
            taken = jobs_b.recover({"build": lambda params: (lambda ctx: ran.append(ctx.fence) or {"by": "b"})})
        assert ran and ran[0].attempt == 2 and ran[0].owner == cat_b.replica_id, "b took the job over"
        assert jobs_b.wait(job.id).state == "succeeded" and jobs_b.get(job.id).result == {"by": "b"}
        assert taken == [] or taken == [job.id]
        gate.set()
        assert done.wait(30)
        assert jobs_a.get(job.id).state == "succeeded" and jobs_a.get(job.id).result == {"by": "b"}
        assert a.get("p").current_version is None, "the old worker's commit was refused"
        with pytest.raises(LeaseLost):
            cat_a.commit_version(a.get("p").id, cat_a.reserve_version(a.get("p").id, new_items=0, source="x")[0],
                                 items=(), size=0, index="Flat", stats={}, activate=True,
                                 fence=Fence(job.id, cat_a.replica_id, 1))
    finally:
        gate.set()
        jobs_a.close()
        jobs_b.close()


def test_replicas_starting_at_once_migrate_once(url: str, tmp_path: Path) -> None:
    opened: list[Catalog] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(Catalog(url, data_dir=tmp_path))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors and len(opened) == 4
        numbers = [r[0] for r in opened[0].query("SELECT number FROM schema_migrations ORDER BY number")]
        assert numbers == sorted(set(numbers)) and numbers[-1] == SCHEMA_VERSION
    finally:
        for catalog in opened:
            catalog.close()


def test_retention_waits_out_the_grace_and_keeps_what_a_replica_serves(tmp_path: Path, url: str,
                                                                       encoders: EncoderRegistry) -> None:
    a = open_pools(tmp_path / "shared", encoders, catalog_url=url, lease_s=1.0, keep_versions=1,
                   retention_grace_s=0.5)
    try:
        a.create(name="p", encoder="precomputed:8")
        a.add_items("p", _items("x", 10))
        pool = a.get("p")
        serving: dict[int, list[str]] = {pool.id: ["s1"]}
        a.store.report_serving(lambda: serving)  # what this replica's heartbeat says it serves
        a.store.catalog.heartbeat(serving)
        a.store.write(pool, [], np.empty((0, 8), np.float32), bases=a.snapshots, source="r", replace_all=True)
        a.add_items("p", _items("z", 2, seed=4))
        segments = a.store.files.segments_dir(pool.id)
        time.sleep(0.6)
        a.store.collect_garbage(pool.id)
        assert (segments / "s1").exists(), "a segment a live replica serves stays"
        serving = {}
        a.store.report_serving(lambda: serving)
        a.store.catalog.heartbeat(serving)
        a.store.collect_garbage(pool.id)
        assert (segments / "s1").exists(), "retired just now: the grace has not passed"
        time.sleep(0.6)
        assert "s1" in a.store.collect_garbage(pool.id) and not (segments / "s1").exists()
    finally:
        close_pools(a)
