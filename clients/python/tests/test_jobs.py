"""Builds, adapters and compactions as jobs: start, wait with progress, list, get, cancel."""

from __future__ import annotations

import pytest
from stub_server import Reply, stub_server
from support import env, fresh_name

from exemplar_client import ConflictError, Exemplar, JobFailedError, JobOut, JobTimeoutError, PermissionDeniedError

Pool = tuple[str, list[dict]]


def test_compaction_job_waits_with_progress(client: Exemplar, vector_pool: Pool) -> None:
    name, _ = vector_pool
    seen: list[JobOut] = []
    job = client.compact(name)
    assert job.record.kind == "compact" and job.record.pool == name
    final = job.wait(progress=seen.append, timeout=120, poll_interval=0.1)
    assert final.state == "succeeded" and final.finished_at is not None
    assert seen and seen[-1] == final  # the callback saw the final record
    assert client.get_job(job.id) == final
    assert job.id in [j.id for j in client.list_jobs(pool=name)]
    assert len(client.list_jobs(limit=1)) == 1
    with pytest.raises(ConflictError) as caught:  # a finished job cannot be cancelled
        client.cancel_job(job.id)
    assert caught.value.param == "job"


def test_adapter_training_then_invariant_selection(client: Exemplar, vector_pool: Pool) -> None:
    name, _ = vector_pool
    job = client.train_adapter(name, epochs=5, max_steps=40, batch_size=32)
    assert job.record.kind == "adapter"
    final = job.wait(timeout=300, poll_interval=0.2)
    assert final.state == "succeeded", final.errors
    assert client.get_pool(name).adapter is not None
    result = client.select(name, query={"item_id": "v000"}, strategy="invariant", k_per_class=1)
    assert sorted(d.label for d in result.demonstrations) == ["ant", "bee", "cat"]


def test_build_from_a_source_on_the_server(client: Exemplar) -> None:
    source = env("EXEMPLAR_CLIENT_TEST_BUILD_SOURCE")
    name = fresh_name("built")
    client.create_pool(name=name)
    try:
        progress: list[JobOut] = []
        job = client.start_build(name, source=source, shard_size=8)
        final = job.wait(progress=progress.append, timeout=300, poll_interval=0.2)
        assert final.state == "succeeded", final.errors
        assert progress and progress[-1].state == "succeeded"
        stats = client.get_pool(name)
        assert stats.size > 0 and stats.current_version == 1
        with pytest.raises(PermissionDeniedError) as caught:
            client.start_build(name, source="/definitely/not/under/the/roots.jsonl")
        assert (caught.value.status, caught.value.param) == (403, "source")
    finally:
        client.delete_pool(name)


def test_a_cancelled_build_raises_on_wait(client: Exemplar) -> None:
    source = env("EXEMPLAR_CLIENT_TEST_BUILD_SOURCE")
    name = fresh_name("cancelled")
    client.create_pool(name=name)
    try:
        job = client.start_build(name, source=source, shard_size=1, batch_size=1, workers=1)
        try:
            job.cancel()
        except ConflictError:
            pytest.fail("the build finished before it could be cancelled; give it more work")
        with pytest.raises(JobFailedError) as caught:
            job.wait(timeout=120, poll_interval=0.1)
        assert caught.value.job.state == "cancelled"
    finally:
        client.delete_pool(name)


def _job(state: str, **fields: object) -> dict[str, object]:
    return {"id": "j1", "kind": "build", "pool": "p", "state": state, "params": {}, "progress": {}, "result": None,
            "errors": [], "created_at": 1.0, "started_at": 1.0, "finished_at": None, **fields}


def test_wait_gives_up_at_its_timeout() -> None:
    with stub_server([Reply(202, _job("running"))]) as stub, Exemplar(stub.url) as ex:
        job = ex.compact("p")
        with pytest.raises(JobTimeoutError) as caught:
            job.wait(timeout=0.3, poll_interval=0.05)
    assert caught.value.job.state == "running" and isinstance(caught.value, TimeoutError)
    assert len(stub.requests) >= 2  # it polled


def test_wait_raises_when_the_job_failed() -> None:
    failed = _job("failed", errors=[{"message": "source vanished"}], finished_at=2.0)
    with stub_server([Reply(202, _job("queued")), Reply(200, failed)]) as stub, Exemplar(stub.url) as ex:
        job = ex.start_build("p", source="/data/x.jsonl")
        with pytest.raises(JobFailedError, match="source vanished") as caught:
            job.wait(timeout=10, poll_interval=0.01)
        assert caught.value.job.state == "failed"
        assert job.wait(timeout=10, poll_interval=0.01, raise_on_failure=False).state == "failed"
