"""The asynchronous client: ``Exemplar``'s surface, awaited. Requests are built and answers read by
the same ``_operations``; only sending and sleeping differ."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, AsyncIterator, Dict, List, Mapping, Optional, Sequence, Type, TypeVar, Union

import httpx

from exemplar_client import _operations as ops
from exemplar_client._client import MAX_PAGES
from exemplar_client._jobs import AsyncJob
from exemplar_client._operations import DEFAULT_BATCH_CHUNK, Call, compose
from exemplar_client._transport import DEFAULT_TIMEOUT, Settings
from exemplar_client.models import (
    AdapterTrainRequest,
    BatchSelectRequest,
    BatchSelectResponse,
    BatchInferRequest,
    BatchInferResponse,
    BuildRequest,
    ChatCompletion,
    ChatCompletionRequest,
    HealthStatus,
    InferRequest,
    InferResponse,
    ItemIn,
    ItemOut,
    ItemPageOut,
    ItemsAdded,
    ItemsDeleted,
    JobOut,
    ModelOut,
    OverviewOut,
    ReplicasOut,
    PoolCreate,
    PoolOut,
    PoolStatsOut,
    ReadyStatus,
    RecentStatsOut,
    SelectRequest,
    SelectResponse,
    ServerInfo,
    StrategiesOut,
    VersionOut,
)

__all__ = ["AsyncExemplar"]

T = TypeVar("T")


class AsyncExemplar:
    """Async client for an Exemplar server: ``async with AsyncExemplar(url) as ex: await ex.select(...)``.

    Same arguments, methods, retries and errors as ``Exemplar`` (see its documentation); jobs are
    ``AsyncJob`` handles and ``iter_items`` an async iterator."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: Optional[str] = None, *,
                 timeout: Union[float, httpx.Timeout] = DEFAULT_TIMEOUT, max_retries: int = 2,
                 retry_backoff: float = 0.5, max_retry_after: float = 60.0,
                 headers: Optional[Dict[str, str]] = None) -> None:
        self._settings = Settings(base_url, api_key, timeout, max_retries, retry_backoff, max_retry_after, headers)
        self._http = httpx.AsyncClient(base_url=self._settings.base_url, headers=self._settings.headers,
                                       timeout=self._settings.timeout)

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncExemplar":
        return self

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                        tb: Optional[TracebackType]) -> None:
        await self.close()

    async def _run(self, call: Call[T]) -> T:
        # The loop of Exemplar._run, with an awaited send and sleep.
        attempt = 0
        while True:
            try:
                response = await self._http.send(self._settings.request(self._http, call))
            except httpx.TransportError as exc:
                delay = self._settings.delay_after_error(call, exc, attempt)
            else:
                retry_in = self._settings.delay_after_response(call, response, attempt)
                if retry_in is None:
                    return call.result(response)
                delay = retry_in
            await asyncio.sleep(delay)
            attempt += 1

    async def health(self) -> HealthStatus:
        return await self._run(ops.health())

    async def ready(self) -> ReadyStatus:
        return await self._run(ops.ready())

    async def info(self) -> ServerInfo:
        return await self._run(ops.info())

    async def list_pools(self) -> List[PoolOut]:
        return await self._run(ops.list_pools())

    async def create_pool(self, request: Union[PoolCreate, Mapping[str, Any], None] = None, /,
                          **fields: Any) -> PoolOut:
        return await self._run(ops.create_pool(compose(PoolCreate, request, fields)))

    async def get_pool(self, pool: str) -> PoolStatsOut:
        return await self._run(ops.get_pool(pool))

    async def delete_pool(self, pool: str) -> None:
        await self._run(ops.delete_pool(pool))

    async def list_versions(self, pool: str) -> List[VersionOut]:
        return await self._run(ops.list_versions(pool))

    async def activate_version(self, pool: str, version: int) -> PoolOut:
        return await self._run(ops.activate_version(pool, version))

    async def add_items(self, pool: str, items: Sequence[Union[ItemIn, Mapping[str, Any]]]) -> ItemsAdded:
        return await self._run(ops.add_items(pool, items))

    async def get_item(self, pool: str, item_id: str) -> ItemOut:
        return await self._run(ops.get_item(pool, item_id))

    async def get_item_image(self, pool: str, item_id: str) -> bytes:
        return await self._run(ops.get_item_image(pool, item_id))

    async def list_items(self, pool: str, *, labels: Union[str, Sequence[str], None] = None,
                         domains: Union[str, Sequence[str], None] = None, limit: Optional[int] = None,
                         cursor: Optional[str] = None) -> ItemPageOut:
        return await self._run(ops.list_items(pool, labels=labels, domains=domains, limit=limit, cursor=cursor))

    async def iter_items(self, pool: str, *, labels: Union[str, Sequence[str], None] = None,
                         domains: Union[str, Sequence[str], None] = None,
                         page_size: Optional[int] = None) -> AsyncIterator[ItemOut]:
        cursor: Optional[str] = None
        for _ in range(MAX_PAGES):
            page = await self.list_items(pool, labels=labels, domains=domains, limit=page_size, cursor=cursor)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            if page.next_cursor == cursor:
                raise RuntimeError(f"the server repeated cursor {cursor!r}")
            cursor = page.next_cursor
        raise RuntimeError(f"more than {MAX_PAGES} pages; page with list_items")

    async def delete_item(self, pool: str, item_id: str) -> ItemsDeleted:
        return await self._run(ops.delete_item(pool, item_id))

    async def delete_items(self, pool: str, ids: Sequence[str]) -> ItemsDeleted:
        return await self._run(ops.delete_items(pool, ids))

    async def select(self, pool: str, request: Union[SelectRequest, Mapping[str, Any], None] = None, /,
                     **fields: Any) -> SelectResponse:
        return await self._run(ops.select(pool, compose(SelectRequest, request, fields)))

    async def select_batch(self, pool: str, request: Union[BatchSelectRequest, Mapping[str, Any], None] = None, /,
                           *, chunk_size: int = DEFAULT_BATCH_CHUNK, **fields: Any) -> BatchSelectResponse:
        # One chunk at a time, like the sync client: the server batches concurrent searches
        # itself, and sequential chunks keep one request per caller in its queue.
        chunks = ops.split_batch(compose(BatchSelectRequest, request, fields), chunk_size)
        return ops.merge_batches([await self._run(ops.select_batch(pool, chunk)) for chunk in chunks])

    async def list_strategies(self) -> StrategiesOut:
        return await self._run(ops.list_strategies())

    async def infer_batch(self, pool: str, request: Union[BatchInferRequest, Mapping[str, Any], None] = None, /,
                    **fields: Any) -> BatchInferResponse:
        return await self._run(ops.infer_batch(pool, compose(BatchInferRequest, request, fields)))

    async def infer(self, pool: str, request: Union[InferRequest, Mapping[str, Any], None] = None, /,
                    **fields: Any) -> InferResponse:
        return await self._run(ops.infer(pool, compose(InferRequest, request, fields)))

    async def chat(self, request: Union[ChatCompletionRequest, Mapping[str, Any], None] = None, /,
             **fields: Any) -> ChatCompletion:
        return await self._run(ops.chat_completions(compose(ChatCompletionRequest, request, fields)))

    async def list_models(self) -> List[ModelOut]:
        return await self._run(ops.list_models())

    async def start_build(self, pool: str, request: Union[BuildRequest, Mapping[str, Any], None] = None, /,
                          **fields: Any) -> AsyncJob:
        return AsyncJob(self, await self._run(ops.start_build(pool, compose(BuildRequest, request, fields))))

    async def train_adapter(self, pool: str, request: Union[AdapterTrainRequest, Mapping[str, Any], None] = None, /,
                            **fields: Any) -> AsyncJob:
        return AsyncJob(self, await self._run(ops.train_adapter(pool, compose(AdapterTrainRequest, request, fields))))

    async def compact(self, pool: str) -> AsyncJob:
        return AsyncJob(self, await self._run(ops.compact(pool)))

    async def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, await self.get_job(job_id))

    async def list_jobs(self, *, pool: Optional[str] = None, limit: Optional[int] = None) -> List[JobOut]:
        return await self._run(ops.list_jobs(pool, limit))

    async def get_job(self, job_id: str) -> JobOut:
        return await self._run(ops.get_job(job_id))

    async def cancel_job(self, job_id: str) -> JobOut:
        return await self._run(ops.cancel_job(job_id))

    async def admin_overview(self) -> OverviewOut:
        return await self._run(ops.admin_overview())

    async def admin_replicas(self) -> ReplicasOut:
        return await self._run(ops.admin_replicas())

    async def admin_stats(self, *, window_s: Optional[float] = None,
                          bucket_s: Optional[float] = None) -> RecentStatsOut:
        return await self._run(ops.admin_stats(window_s, bucket_s))
