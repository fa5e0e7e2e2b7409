"""Every HTTP operation, once: which method and path, what body, how the answer is read, and
whether it is a write (for the retry policy). The sync and async clients run these ``Call``s with
their own transport; nothing here does I/O."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Generic, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from exemplar_client._errors import error_from_response
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
    ItemsDeleteIn,
    ItemsIn,
    JobList,
    JobOut,
    ModelList,
    ModelOut,
    OverviewOut,
    ReplicasOut,
    PoolCreate,
    PoolList,
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

__all__ = ["COVERED_ROUTES", "Call", "DEFAULT_BATCH_CHUNK", "compose", "merge_batches", "split_batch"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# The server's default EXEMPLAR_MAX_BATCH_QUERIES (its document states its own as
# BatchSelectRequest.queries.maxItems).
DEFAULT_BATCH_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None  # noqa: ANN401 - a JSON body
    params: Optional[List[Tuple[str, Union[str, int, float]]]] = None
    write: bool = False  # retried only when the server surely did not process it (see _retries)
    retry: bool = True
    accept: frozenset = frozenset()  # statuses besides 2xx that are answers rather than errors

    def result(self, response: httpx.Response) -> T:
        if response.is_success or response.status_code in self.accept:
            return self.parse(response)
        raise error_from_response(response)


def _seg(value: Union[str, int]) -> str:
    # Ids may hold '/', '?', '#' or spaces; each is one path segment.
    return quote(str(value), safe="")


def _model(cls: Type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: cls.model_validate_json(response.content)


def compose(cls: Type[M], request: Union[M, Mapping[str, Any], None], fields: Mapping[str, Any]) -> M:
    """The request model from a model, a dict, or keyword fields (validated here: a misspelt field
    fails before anything is sent)."""
    if request is not None and fields:
        raise TypeError(f"give a {cls.__name__} or keyword fields, not both")
    if request is None:
        return cls.model_validate(dict(fields))
    if isinstance(request, cls):
        return request
    if isinstance(request, Mapping):
        return cls.model_validate(dict(request))
    raise TypeError(f"expected a {cls.__name__} or a dict, not {type(request).__name__}")


# --- health ---------------------------------------------------------------------------------------

def health() -> Call[HealthStatus]:
    return Call("GET", "/healthz", _model(HealthStatus))


def ready() -> Call[ReadyStatus]:
    # 503 {"status": "starting"} is the answer "not yet", not a failure to retry.
    return Call("GET", "/readyz", _model(ReadyStatus), retry=False, accept=frozenset({503}))


def info() -> Call[ServerInfo]:
    return Call("GET", "/v1/info", _model(ServerInfo))


# --- pools ----------------------------------------------------------------------------------------

def list_pools() -> Call[List[PoolOut]]:
    return Call("GET", "/v1/pools", lambda r: PoolList.model_validate_json(r.content).pools)


def create_pool(request: PoolCreate) -> Call[PoolOut]:
    return Call("POST", "/v1/pools", _model(PoolOut), json=request.wire(), write=True)


def get_pool(pool: str) -> Call[PoolStatsOut]:
    return Call("GET", f"/v1/pools/{_seg(pool)}", _model(PoolStatsOut))


def list_versions(pool: str) -> Call[List[VersionOut]]:
    return Call("GET", f"/v1/pools/{_seg(pool)}", lambda r: PoolStatsOut.model_validate_json(r.content).versions)


def delete_pool(pool: str) -> Call[None]:
    return Call("DELETE", f"/v1/pools/{_seg(pool)}", lambda r: None, write=True)


def activate_version(pool: str, version: int) -> Call[PoolOut]:
    return Call("POST", f"/v1/pools/{_seg(pool)}/versions/{_seg(version)}/activate", _model(PoolOut), write=True)


# --- items ----------------------------------------------------------------------------------------

def add_items(pool: str, items: Sequence[Union[ItemIn, Mapping[str, Any]]]) -> Call[ItemsAdded]:
    body = ItemsIn(items=[ItemIn.model_validate(dict(i)) if isinstance(i, Mapping) else i for i in items])
    return Call("POST", f"/v1/pools/{_seg(pool)}/items", _model(ItemsAdded), json=body.wire(), write=True)


def get_item(pool: str, item_id: str) -> Call[ItemOut]:
    return Call("GET", f"/v1/pools/{_seg(pool)}/items/{_seg(item_id)}", _model(ItemOut))


def get_item_image(pool: str, item_id: str) -> Call[bytes]:
    return Call("GET", f"/v1/pools/{_seg(pool)}/items/{_seg(item_id)}/image", lambda r: r.content)


def _strings(value: Union[str, Sequence[str], None]) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def list_items(pool: str, *, labels: Union[str, Sequence[str], None], domains: Union[str, Sequence[str], None],
               limit: Optional[int], cursor: Optional[str]) -> Call[ItemPageOut]:
    params: List[Tuple[str, Union[str, int, float]]] = [("label", v) for v in _strings(labels)]
    params += [("domain", v) for v in _strings(domains)]
    if limit is not None:
        params.append(("limit", limit))
    if cursor is not None:
        params.append(("cursor", cursor))
    return Call("GET", f"/v1/pools/{_seg(pool)}/items", _model(ItemPageOut), params=params)


def delete_item(pool: str, item_id: str) -> Call[ItemsDeleted]:
    return Call("DELETE", f"/v1/pools/{_seg(pool)}/items/{_seg(item_id)}", _model(ItemsDeleted), write=True)


def delete_items(pool: str, ids: Sequence[str]) -> Call[ItemsDeleted]:
    body = ItemsDeleteIn(ids=list(ids))
    return Call("POST", f"/v1/pools/{_seg(pool)}/items/delete", _model(ItemsDeleted), json=body.wire(), write=True)


# --- selection and infer --------------------------------------------------------------------------

def select(pool: str, request: SelectRequest) -> Call[SelectResponse]:
    return Call("POST", f"/v1/pools/{_seg(pool)}/select", _model(SelectResponse), json=request.wire())


def select_batch(pool: str, request: BatchSelectRequest) -> Call[BatchSelectResponse]:
    return Call("POST", f"/v1/pools/{_seg(pool)}/select/batch", _model(BatchSelectResponse), json=request.wire())


def list_strategies() -> Call[StrategiesOut]:
    return Call("GET", "/v1/strategies", _model(StrategiesOut))


def split_batch(request: BatchSelectRequest, chunk_size: int) -> List[BatchSelectRequest]:
    """The batch as requests of at most ``chunk_size`` queries with the same options.

    Each query's result depends only on the query and the options, so the chunks' results joined
    are the unchunked results; except with ``shared``, one set for the mean of all the queries,
    which cannot be split."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    queries = request.queries
    if len(queries) <= chunk_size:
        return [request]
    if request.shared:
        raise ValueError(f"a shared batch selects one set for all its queries and cannot be split: send at most "
                         f"{chunk_size} queries, or raise chunk_size up to the server's limit")
    return [request.model_copy(update={"queries": queries[i:i + chunk_size]})
            for i in range(0, len(queries), chunk_size)]


def merge_batches(responses: Sequence[BatchSelectResponse]) -> BatchSelectResponse:
    return BatchSelectResponse(shared=responses[0].shared, results=[r for resp in responses for r in resp.results])


def infer(pool: str, request: InferRequest) -> Call[InferResponse]:
    # Not a write, but retried like one: see _retries.
    return Call("POST", f"/v1/pools/{_seg(pool)}/infer", _model(InferResponse), json=request.wire(), write=True)


# --- the OpenAI-compatible routes ------------------------------------------------------------------

def chat_completions(request: ChatCompletionRequest) -> Call[ChatCompletion]:
    if request.stream:
        # A stream is read event by event; the official openai package does that (see README).
        raise ValueError("this client reads whole answers: leave stream unset, or stream with the openai package "
                         "pointed at the server's /v1")
    # Like infer: the server retries the model itself, so only a request surely not processed is sent again.
    return Call("POST", "/v1/chat/completions", _model(ChatCompletion), json=request.wire(), write=True)


def list_models() -> Call[List[ModelOut]]:
    return Call("GET", "/v1/models", lambda r: ModelList.model_validate_json(r.content).data)


def infer_batch(pool: str, request: BatchInferRequest) -> Call[BatchInferResponse]:
    # Retried like infer: model calls may have been made.
    return Call("POST", f"/v1/pools/{_seg(pool)}/infer/batch", _model(BatchInferResponse), json=request.wire(),
                write=True)


# --- jobs -----------------------------------------------------------------------------------------

def start_build(pool: str, request: BuildRequest) -> Call[JobOut]:
    return Call("POST", f"/v1/pools/{_seg(pool)}/builds", _model(JobOut), json=request.wire(), write=True)


def train_adapter(pool: str, request: AdapterTrainRequest) -> Call[JobOut]:
    return Call("POST", f"/v1/pools/{_seg(pool)}/adapters", _model(JobOut), json=request.wire(), write=True)


def compact(pool: str) -> Call[JobOut]:
    return Call("POST", f"/v1/pools/{_seg(pool)}/compact", _model(JobOut), write=True)


def list_jobs(pool: Optional[str], limit: Optional[int]) -> Call[List[JobOut]]:
    params: List[Tuple[str, Union[str, int, float]]] = []
    if pool is not None:
        params.append(("pool", pool))
    if limit is not None:
        params.append(("limit", limit))
    return Call("GET", "/v1/jobs", lambda r: JobList.model_validate_json(r.content).jobs, params=params)


def get_job(job_id: str) -> Call[JobOut]:
    return Call("GET", f"/v1/jobs/{_seg(job_id)}", _model(JobOut))


def cancel_job(job_id: str) -> Call[JobOut]:
    return Call("POST", f"/v1/jobs/{_seg(job_id)}/cancel", _model(JobOut), write=True)


# --- admin ----------------------------------------------------------------------------------------

def admin_overview() -> Call[OverviewOut]:
    return Call("GET", "/v1/admin/overview", _model(OverviewOut))


def admin_replicas() -> Call[ReplicasOut]:
    return Call("GET", "/v1/admin/replicas", _model(ReplicasOut))


def admin_stats(window_s: Optional[float], bucket_s: Optional[float]) -> Call[RecentStatsOut]:
    params: List[Tuple[str, Union[str, int, float]]] = []
    if window_s is not None:
        params.append(("window_s", window_s))
    if bucket_s is not None:
        params.append(("bucket_s", bucket_s))
    return Call("GET", "/v1/admin/stats", _model(RecentStatsOut), params=params)


# The paths above, for the coverage test: every server route but the dashboard page and /metrics
# has an operation here.
COVERED_ROUTES: Dict[str, Tuple[str, ...]] = {
    "/healthz": ("get",), "/readyz": ("get",), "/v1/info": ("get",),
    "/v1/pools": ("get", "post"), "/v1/pools/{pool}": ("get", "delete"),
    "/v1/pools/{pool}/versions/{version}/activate": ("post",),
    "/v1/pools/{pool}/items": ("get", "post"), "/v1/pools/{pool}/items/{item_id}": ("get", "delete"),
    "/v1/pools/{pool}/items/delete": ("post",), "/v1/pools/{pool}/items/{item_id}/image": ("get",),
    "/v1/pools/{pool}/select": ("post",), "/v1/pools/{pool}/select/batch": ("post",),
    "/v1/pools/{pool}/infer": ("post",), "/v1/pools/{pool}/infer/batch": ("post",), "/v1/pools/{pool}/builds": ("post",),
    "/v1/pools/{pool}/adapters": ("post",), "/v1/pools/{pool}/compact": ("post",),
    "/v1/jobs": ("get",), "/v1/jobs/{job_id}": ("get",), "/v1/jobs/{job_id}/cancel": ("post",),
    "/v1/admin/overview": ("get",), "/v1/admin/stats": ("get",), "/v1/admin/replicas": ("get",),
    "/v1/chat/completions": ("post",), "/v1/models": ("get",), "/v1/strategies": ("get",),
}
