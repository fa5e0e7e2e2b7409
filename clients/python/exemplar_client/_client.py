"""The synchronous client."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Type, TypeVar, Union

import httpx

from exemplar_client import _operations as ops
from exemplar_client._jobs import Job
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

__all__ = ["MAX_PAGES", "Exemplar"]

T = TypeVar("T")
# At most this many pages in one iter_items: a server that never ends the listing cannot hold the
# caller forever (10,000 pages of up to 1,000 items).
MAX_PAGES = 10_000


class Exemplar:
    """Client for an Exemplar server: ``with Exemplar("http://127.0.0.1:8000") as ex: ...``.

    One ``httpx.Client`` (one connection pool) serves every call; close it with ``close()`` or by
    leaving the ``with`` block. ``api_key`` goes as ``Authorization: Bearer``. Calls that fail
    transiently are retried up to ``max_retries`` times with exponential backoff; writes only when
    the server surely did not process them (see ``exemplar_client._retries``). Errors raise
    ``ExemplarError`` subclasses carrying the server's ``type``, ``message``, ``param`` and the HTTP
    ``status``.

    Methods that take a request model (``select``, ``infer``, ``create_pool``, ``start_build``...)
    accept the model, a dict, or its fields as keywords:
    ``ex.select("demo", query={"item_id": "a"}, strategy="balanced", k=8)``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: Optional[str] = None, *,
                 timeout: Union[float, httpx.Timeout] = DEFAULT_TIMEOUT, max_retries: int = 2,
                 retry_backoff: float = 0.5, max_retry_after: float = 60.0,
                 headers: Optional[Dict[str, str]] = None) -> None:
        self._settings = Settings(base_url, api_key, timeout, max_retries, retry_backoff, max_retry_after, headers)
        self._http = httpx.Client(base_url=self._settings.base_url, headers=self._settings.headers,
                                  timeout=self._settings.timeout)

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Exemplar":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    def _run(self, call: Call[T]) -> T:
        # Bounded: the policy gives no delay once max_retries attempts are spent.
        attempt = 0
        while True:
            try:
                response = self._http.send(self._settings.request(self._http, call))
            except httpx.TransportError as exc:
                delay = self._settings.delay_after_error(call, exc, attempt)
            else:
                retry_in = self._settings.delay_after_response(call, response, attempt)
                if retry_in is None:
                    return call.result(response)
                delay = retry_in
            time.sleep(delay)
            attempt += 1

    # --- health -----------------------------------------------------------------------------------

    def health(self) -> HealthStatus:
        """``GET /healthz``: the process is up."""
        return self._run(ops.health())

    def ready(self) -> ReadyStatus:
        """``GET /readyz``: ``status`` ``ready`` (with the pool count) or ``starting``; not retried."""
        return self._run(ops.ready())

    def info(self) -> ServerInfo:
        """``GET /v1/info``: server version and whether API keys are required."""
        return self._run(ops.info())

    # --- pools ------------------------------------------------------------------------------------

    def list_pools(self) -> List[PoolOut]:
        return self._run(ops.list_pools())

    def create_pool(self, request: Union[PoolCreate, Mapping[str, Any], None] = None, /, **fields: Any) -> PoolOut:
        """Create a pool: ``name``, and optionally ``encoder`` (e.g. ``precomputed:512``), ``embed``,
        ``metric``, ``index``, ``centre``. ``ConflictError`` when it exists."""
        return self._run(ops.create_pool(compose(PoolCreate, request, fields)))

    def get_pool(self, pool: str) -> PoolStatsOut:
        """Pool stats: size, labels, domains, versions, encoder, adapter."""
        return self._run(ops.get_pool(pool))

    def delete_pool(self, pool: str) -> None:
        """Delete a pool and every version of it."""
        self._run(ops.delete_pool(pool))

    def list_versions(self, pool: str) -> List[VersionOut]:
        """The pool's versions (from its stats); ``current`` marks the serving one."""
        return self._run(ops.list_versions(pool))

    def activate_version(self, pool: str, version: int) -> PoolOut:
        """Make ``version`` current: rollback or roll forward."""
        return self._run(ops.activate_version(pool, version))

    # --- items ------------------------------------------------------------------------------------

    def add_items(self, pool: str, items: Sequence[Union[ItemIn, Mapping[str, Any]]]) -> ItemsAdded:
        """Add or replace items as one new version. Each item is an ``ItemIn`` or a dict of its
        fields; ``image`` may be a file path, bytes or a PIL image, ``embedding`` any sequence of
        numbers (for ``precomputed`` pools). One request: the server's limit per request applies
        (``EXEMPLAR_MAX_ITEMS_PER_REQUEST``); split larger sets yourself (each call is a version)
        or use a build."""
        return self._run(ops.add_items(pool, items))

    def get_item(self, pool: str, item_id: str) -> ItemOut:
        return self._run(ops.get_item(pool, item_id))

    def get_item_image(self, pool: str, item_id: str) -> bytes:
        """The item's image file, as stored. ``NotFoundError`` when it has none."""
        return self._run(ops.get_item_image(pool, item_id))

    def list_items(self, pool: str, *, labels: Union[str, Sequence[str], None] = None,
                   domains: Union[str, Sequence[str], None] = None, limit: Optional[int] = None,
                   cursor: Optional[str] = None) -> ItemPageOut:
        """One page of the current version's items, oldest write first; pass its ``next_cursor``
        as ``cursor`` for the next one."""
        return self._run(ops.list_items(pool, labels=labels, domains=domains, limit=limit, cursor=cursor))

    def iter_items(self, pool: str, *, labels: Union[str, Sequence[str], None] = None,
                   domains: Union[str, Sequence[str], None] = None, page_size: Optional[int] = None) -> Iterator[ItemOut]:
        """Every item (filtered), page after page."""
        cursor: Optional[str] = None
        for _ in range(MAX_PAGES):
            page = self.list_items(pool, labels=labels, domains=domains, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            if page.next_cursor == cursor:
                raise RuntimeError(f"the server repeated cursor {cursor!r}")
            cursor = page.next_cursor
        raise RuntimeError(f"more than {MAX_PAGES} pages; page with list_items")

    def delete_item(self, pool: str, item_id: str) -> ItemsDeleted:
        """Delete one item as a new version; ``NotFoundError`` if the pool does not hold it."""
        return self._run(ops.delete_item(pool, item_id))

    def delete_items(self, pool: str, ids: Sequence[str]) -> ItemsDeleted:
        """Delete many items as one new version; ids not held come back in ``missing``."""
        return self._run(ops.delete_items(pool, ids))

    # --- selection --------------------------------------------------------------------------------

    def select(self, pool: str, request: Union[SelectRequest, Mapping[str, Any], None] = None, /,
               **fields: Any) -> SelectResponse:
        """Demonstrations for one query: ``query`` (``image``, ``text``, ``embedding``,
        ``embedding_b64`` or ``item_id``), ``strategy``, ``k`` or ``k_per_class``, filters..."""
        return self._run(ops.select(pool, compose(SelectRequest, request, fields)))

    def select_batch(self, pool: str, request: Union[BatchSelectRequest, Mapping[str, Any], None] = None, /, *,
                     chunk_size: int = DEFAULT_BATCH_CHUNK, **fields: Any) -> BatchSelectResponse:
        """Demonstrations for many ``queries`` with the same options; one result per query, in order.

        More queries than ``chunk_size`` (default: the server's default limit, 256) go as several
        requests whose results are joined, the same as one request would give. A ``shared`` batch
        (one set for all) cannot be split: ``ValueError`` when it is larger than ``chunk_size``."""
        chunks = ops.split_batch(compose(BatchSelectRequest, request, fields), chunk_size)
        return ops.merge_batches([self._run(ops.select_batch(pool, chunk)) for chunk in chunks])

    def list_strategies(self) -> StrategiesOut:
        """The selection strategies and pipeline stages, with the JSON Schema of their parameters."""
        return self._run(ops.list_strategies())

    def infer_batch(self, pool: str, request: Union[BatchInferRequest, Mapping[str, Any], None] = None, /,
                    **fields: Any) -> BatchInferResponse:
        """Many ``queries`` answered in few calls of the model endpoint ``mllm`` (ManyICL): one
        demonstration set shown with every call, ``queries_per_call`` numbered queries per call,
        an answer or a failure per query."""
        return self._run(ops.infer_batch(pool, compose(BatchInferRequest, request, fields)))

    def infer(self, pool: str, request: Union[InferRequest, Mapping[str, Any], None] = None, /,
              **fields: Any) -> InferResponse:
        """The server-driven VideoICL loop against the configured model endpoint ``mllm``."""
        return self._run(ops.infer(pool, compose(InferRequest, request, fields)))

    def chat(self, request: Union[ChatCompletionRequest, Mapping[str, Any], None] = None, /,
             **fields: Any) -> ChatCompletion:
        """An OpenAI chat completion through the server's ``/v1/chat/completions``: ``model`` names an
        endpoint configured on the server (``list_models``); ``exemplar={"pool": ..., "strategy": ...,
        "k": ...}`` puts selected demonstrations before the last user message, and the answer's
        ``exemplar`` says which. Other OpenAI fields (``max_tokens``, ``temperature``...) pass through.
        Whole answers only: to stream, point the ``openai`` package at the server's ``/v1``."""
        return self._run(ops.chat_completions(compose(ChatCompletionRequest, request, fields)))

    def list_models(self) -> List[ModelOut]:
        """The model endpoints configured on the server, as OpenAI models."""
        return self._run(ops.list_models())

    # --- jobs -------------------------------------------------------------------------------------

    def start_build(self, pool: str, request: Union[BuildRequest, Mapping[str, Any], None] = None, /,
                    **fields: Any) -> Job:
        """Build a new version from ``source``, a path on the server under its
        ``EXEMPLAR_SOURCE_ROOTS``; returns the job (``.wait()`` for it)."""
        return Job(self, self._run(ops.start_build(pool, compose(BuildRequest, request, fields))))

    def train_adapter(self, pool: str, request: Union[AdapterTrainRequest, Mapping[str, Any], None] = None, /,
                      **fields: Any) -> Job:
        """Train the current version's CCI adapter (for ``strategy="invariant"``); returns the job."""
        return Job(self, self._run(ops.train_adapter(pool, compose(AdapterTrainRequest, request, fields))))

    def compact(self, pool: str) -> Job:
        """Merge small segments and purge deleted rows now; returns the job."""
        return Job(self, self._run(ops.compact(pool)))

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (read now)."""
        return Job(self, self.get_job(job_id))

    def list_jobs(self, *, pool: Optional[str] = None, limit: Optional[int] = None) -> List[JobOut]:
        """Recent jobs, newest first."""
        return self._run(ops.list_jobs(pool, limit))

    def get_job(self, job_id: str) -> JobOut:
        return self._run(ops.get_job(job_id))

    def cancel_job(self, job_id: str) -> JobOut:
        """Cancel a queued or running job."""
        return self._run(ops.cancel_job(job_id))

    # --- admin ------------------------------------------------------------------------------------

    def admin_overview(self) -> OverviewOut:
        """The dashboard's counts: pools, items, running and failed jobs, model endpoints."""
        return self._run(ops.admin_overview())

    def admin_replicas(self) -> ReplicasOut:
        """The server processes sharing the catalog, their leases, and which one answered."""
        return self._run(ops.admin_replicas())

    def admin_stats(self, *, window_s: Optional[float] = None, bucket_s: Optional[float] = None) -> RecentStatsOut:
        """Recent selection latency (p50/p95 per bucket), strategy mix, labels returned."""
        return self._run(ops.admin_stats(window_s, bucket_s))
