"""Adapters in the core: numpy application, storage with their version, training jobs, invariant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from exemplar.app.adapters import CCITrainer
from exemplar.encoders.cci import CCIConfig, build_head
from exemplar.errors import InvalidRequest
from exemplar.retrieval.store.items import item_row
from exemplar.retrieval import (
    Adapter,
    AdapterMissing,
    AdapterService,
    JobService,
    NewItem,
    PoolService,
    Query,
    SelectionOptions,
    SelectionService,
)
from exemplar.samples import domain_dominant_embeddings
from tests.helpers import close_pools, open_pools

SQLITE_ONLY = pytest.mark.parametrize("catalog_url", [None], ids=["sqlite"])


def test_numpy_adapter_equals_the_torch_head() -> None:
    torch.manual_seed(0)
    head = build_head(6, CCIConfig(out_dim=4, hidden_dim=5))
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    adapter = Adapter(tuple((m.weight.detach().numpy().T, m.bias.detach().numpy()) for m in linears))
    X = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(head(torch.from_numpy(X)), dim=1).numpy()
    np.testing.assert_allclose(adapter.apply(X), expected, atol=1e-5)
    assert (adapter.in_dim, adapter.out_dim) == (6, 4)


def test_adapter_save_and_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    adapter = Adapter(((rng.normal(size=(3, 4)).astype(np.float32), np.zeros(4, np.float32)),))
    adapter.save(tmp_path / "w.npz")
    loaded = Adapter.load(tmp_path / "w.npz")
    X = rng.normal(size=(5, 3))
    np.testing.assert_array_equal(adapter.apply(X), loaded.apply(X))


@pytest.fixture
def shifted_pool(pools: PoolService) -> str:
    V, labels, domains = domain_dominant_embeddings(per_class_per_domain=25, dim=32, seed=5)
    pools.create(name="shift", encoder="precomputed:32")
    pools.add_items("shift", [NewItem(id=f"s{i:04d}", label=labels[i], domain=domains[i], embedding=V[i])
                              for i in range(len(V))])
    return "shift"


@pytest.fixture
def adapters(pools: PoolService):
    jobs = JobService(pools.store.catalog)
    yield AdapterService(pools.store, pools.snapshots, jobs, CCITrainer("cpu"))
    jobs.close()


@SQLITE_ONLY  # a second store opens the data directory's SQLite catalog by path
def test_training_job_stores_the_adapter_with_its_version(pools, adapters, shifted_pool, encoders) -> None:
    job = adapters.jobs.wait(adapters.start(shifted_pool, {"epochs": 30}).id)
    assert job.state == "succeeded", job.errors
    assert job.result["version"] == 1 and job.result["best_epoch"] >= 0
    assert job.progress["done"] >= 1
    stats = pools.stats(shifted_pool)
    assert stats.adapter["version"] == 1 and stats.adapter["config"]["epochs"] == 30
    selection = SelectionService(pools.store, pools.snapshots, pools.encoders)
    result = selection.select(shifted_pool, Query(item_id="s0000"), "invariant", SelectionOptions(k=6, invariant_base="topk"))
    assert len(result.demonstrations) == 6 and "s0000" not in {d.id for d in result.demonstrations}
    balanced = selection.select(shifted_pool, Query(item_id="s0000"), "invariant", SelectionOptions(k_per_class=1))
    assert len({d.label for d in balanced.demonstrations}) == 6

    reopened = open_pools(pools.store.data_dir, encoders)  # a restart reloads the adapter from disk
    try:
        again = SelectionService(reopened.store, reopened.snapshots, encoders).select(shifted_pool, Query(item_id="s0000"), "invariant",
                                                  SelectionOptions(k=6, invariant_base="topk"))
        assert [d.id for d in again.demonstrations] == [d.id for d in result.demonstrations]
        np.testing.assert_allclose([d.score for d in again.demonstrations], [d.score for d in result.demonstrations])
    finally:
        close_pools(reopened)


def test_additions_are_mapped_through_the_adapter_and_a_new_build_needs_one(pools, adapters, shifted_pool) -> None:
    selection = SelectionService(pools.store, pools.snapshots, pools.encoders)
    with pytest.raises(AdapterMissing, match="no CCI adapter"):
        selection.select(shifted_pool, Query(item_id="s0001"), "invariant", SelectionOptions())
    assert adapters.jobs.wait(adapters.start(shifted_pool, {"epochs": 3}).id).state == "succeeded"
    extra = np.ones(32)
    pools.add_items(shifted_pool, [NewItem(id="extra", label="class-0", domain="domain-0", embedding=extra)])
    # The new item was mapped at write time: in the adapter space it is its own query's nearest.
    found = selection.select(shifted_pool, Query(embedding=extra.tolist()), "invariant",
                             SelectionOptions(k=1, invariant_base="topk"))
    assert found.version == 2 and found.demonstrations[0].id == "extra"
    assert pools.stats(shifted_pool).adapter["version"] == 1  # inherited, and the stats say so
    assert found.demonstrations[0].score == pytest.approx(1.0, abs=1e-5)
    # A full rebuild starts without an adapter; the message names the versions that have one.
    pools.store.write(pools.get(shifted_pool), [item_row(NewItem(id="only", label="class-0", embedding=extra))],
                      np.asarray([extra / np.linalg.norm(extra)], np.float32), bases=pools.snapshots, source="test",
                      replace_all=True)
    with pytest.raises(AdapterMissing, match=r"adapters exist for version\(s\) 1"):
        selection.select(shifted_pool, Query(item_id="only"), "invariant", SelectionOptions())
    pools.activate(shifted_pool, 2)
    assert selection.select(shifted_pool, Query(item_id="s0001"), "invariant", SelectionOptions()).version == 2


def test_retraining_replaces_the_adapter(pools, adapters, shifted_pool) -> None:
    first = adapters.jobs.wait(adapters.start(shifted_pool, {"epochs": 2, "seed": 1}).id).result["adapter_id"]
    second = adapters.jobs.wait(adapters.start(shifted_pool, {"epochs": 2, "seed": 2}).id).result["adapter_id"]
    assert pools.stats(shifted_pool).adapter["id"] == second != first
    snap = pools.snapshots.snapshot(shifted_pool)
    assert snap.adapter.adapter_id == second
    pool_id = pools.get(shifted_pool).id
    assert sorted(p.name for p in pools.store.files.adapters_dir(pool_id).iterdir()) == [str(second)]
    for part in snap.space.parts:
        assert sorted(p.name for p in (part.segment.folder / "adapters").iterdir()) == [str(second)]


def test_bad_training_requests(pools, adapters, shifted_pool) -> None:
    pools.create(name="unlabelled", encoder="precomputed:4")
    pools.add_items("unlabelled", [NewItem(id=f"u{i}", embedding=np.eye(4)[i % 4] + i) for i in range(10)])
    with pytest.raises(InvalidRequest, match="at least 2 classes"):
        adapters.start("unlabelled", {})
    job = adapters.jobs.wait(adapters.start(shifted_pool, {"head": "cnn"}).id)
    assert job.state == "failed" and job.errors[0]["param"] == "head"
    assert pools.stats(shifted_pool).adapter is None
    states = [r["state"] for r in pools.store.catalog.query("SELECT state FROM adapters")]
    assert states == ["failed"]


def test_cancelling_a_training_job_stores_nothing(pools, adapters, shifted_pool) -> None:
    job = adapters.start(shifted_pool, {"epochs": 1000, "patience": 1000, "max_steps": 1_000_000})
    adapters.jobs.cancel(job.id)
    final = adapters.jobs.wait(job.id)
    assert final.state == "cancelled"
    assert pools.stats(shifted_pool).adapter is None


def test_jobs_left_running_by_a_dead_process_are_marked_failed(pools) -> None:
    pools.store.catalog.query("SELECT 1")
    with pools.store.catalog.transaction() as conn:
        conn.execute("INSERT INTO jobs (id, kind, pool, state, pid, created_at) VALUES ('old', 'adapter', 'p', 'running', 999999999, 0)")
    jobs = JobService(pools.store.catalog)
    try:
        assert jobs.recover() == []
        job = jobs.get("old")
        assert job.state == "failed" and "interrupted" in job.errors[0]["message"]
    finally:
        jobs.close()
