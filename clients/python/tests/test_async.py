"""AsyncExemplar against the real server: the same surface, awaited (no plugin: asyncio.run)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from support import DIM, TIMEOUT_S, env, fresh_name, vector_items

from exemplar_client import AsyncExemplar, BadRequestError, ConflictError, JobOut, NotFoundError

T = TypeVar("T")


def run(server_url: str, api_key: str | None, body: Callable[[AsyncExemplar], Awaitable[T]]) -> T:
    async def main() -> T:
        async with AsyncExemplar(server_url, api_key=api_key, timeout=TIMEOUT_S) as ex:
            return await asyncio.wait_for(body(ex), timeout=300)

    return asyncio.run(main())


def test_async_pool_items_selection_and_jobs(server_url: str, api_key: str | None) -> None:
    items = vector_items(30)

    async def body(ex: AsyncExemplar) -> None:
        assert (await ex.health()).status == "ok" and (await ex.ready()).ready
        assert (await ex.info()).name == "exemplar"
        name = fresh_name("async")
        await ex.create_pool(name=name, encoder=f"precomputed:{DIM}")
        try:
            with pytest.raises(ConflictError):
                await ex.create_pool(name=name, encoder=f"precomputed:{DIM}")
            first = await ex.add_items(name, items[:20])
            second = await ex.add_items(name, items[20:])
            assert name in [p.name for p in await ex.list_pools()]
            assert (await ex.get_pool(name)).size == 30
            assert [v.version for v in await ex.list_versions(name)][-2:] == [first.version, second.version]
            assert (await ex.activate_version(name, first.version)).size == 20
            await ex.activate_version(name, second.version)

            assert (await ex.get_item(name, "v003")).label == items[3]["label"]
            page = await ex.list_items(name, limit=4)
            assert len(page.items) == 4 and page.next_cursor
            assert [i.id async for i in ex.iter_items(name, page_size=4)] == [i["id"] for i in items]

            one = await ex.select(name, query={"item_id": "v000"}, strategy="balanced", k_per_class=1)
            assert sorted(d.label for d in one.demonstrations) == ["ant", "bee", "cat"]
            queries = [{"item_id": i["id"]} for i in items[:7]]
            whole = await ex.select_batch(name, queries=queries, k=3)
            chunked = await ex.select_batch(name, queries=queries, k=3, chunk_size=2)
            assert [[d.id for d in r.demonstrations] for r in chunked.results] == \
                   [[d.id for d in r.demonstrations] for r in whole.results]
            with pytest.raises(BadRequestError) as caught:
                await ex.select(name, query={"item_id": "v000"}, k=0)
            assert caught.value.param == "k"

            deleted = await ex.delete_item(name, "v000")
            assert deleted.deleted == ["v000"]
            many = await ex.delete_items(name, ["v001", "gone"])
            assert many.deleted == ["v001"] and many.missing == ["gone"]

            seen: list[JobOut] = []
            job = await ex.compact(name)
            final = await job.wait(progress=seen.append, timeout=120, poll_interval=0.1)
            assert final.state == "succeeded" and seen[-1] == final
            assert (await ex.job(job.id)).record == final
            assert (await ex.get_job(job.id)).state == "succeeded"
            assert job.id in [j.id for j in await ex.list_jobs(pool=name)]
            with pytest.raises(ConflictError):
                await ex.cancel_job(job.id)
            adapter = await ex.train_adapter(name, epochs=2, max_steps=10, batch_size=16)
            assert (await adapter.wait(timeout=300, poll_interval=0.2)).state == "succeeded"

            assert (await ex.admin_overview()).pools >= 1
            assert (await ex.admin_stats(window_s=600)).requests >= 1
        finally:
            await ex.delete_pool(name)
        with pytest.raises(NotFoundError):
            await ex.get_pool(name)

    run(server_url, api_key, body)


def test_async_images_and_infer(server_url: str, api_key: str | None, shapes_pool: str, mllm: str) -> None:
    async def body(ex: AsyncExemplar) -> None:
        item = (await ex.list_items(shapes_pool, limit=1)).items[0]
        image = await ex.get_item_image(shapes_pool, item.id)
        best = (await ex.select(shapes_pool, query={"image": image}, k=1)).demonstrations[0]
        assert best.id == item.id
        result = await ex.infer(shapes_pool, query={"item_id": item.id}, mllm=mllm, window=2, max_rounds=2)
        assert result.answer in (await ex.get_pool(shapes_pool)).labels

    run(server_url, api_key, body)


def test_async_build_job(server_url: str, api_key: str | None) -> None:
    source = env("EXEMPLAR_CLIENT_TEST_BUILD_SOURCE")

    async def body(ex: AsyncExemplar) -> None:
        name = fresh_name("async-built")
        await ex.create_pool(name=name)
        try:
            job = await ex.start_build(name, source=source)
            final = await job.wait(timeout=300, poll_interval=0.2)
            assert final.state == "succeeded" and (await ex.get_pool(name)).size > 0
        finally:
            await ex.delete_pool(name)

    run(server_url, api_key, body)
