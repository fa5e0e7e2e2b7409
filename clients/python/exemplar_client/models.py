"""Typed request and response models, with the server's field names.

Every model that mirrors a server schema names it in ``SERVER_SCHEMAS`` (client class -> component
name in the server's ``/openapi.json``); the drift test compares the two field by field.

Request models default every optional field to None and leave None out of the body: the server's
defaults apply, so the client never holds a second copy of them that could go stale (where the
server takes null, it means the same as leaving the field out). They
refuse unknown fields, so a misspelt option fails here rather than at the server. Response models
ignore fields they do not know, so an older client keeps working against a newer server.

Images in requests (``ItemIn.image``, ``QueryIn.image``) take a file path (``str`` or
``os.PathLike``), raw ``bytes``, or a PIL image (when PIL is installed); they are sent as base64.
Vectors (``embedding``) take any sequence of numbers, numpy arrays included.
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from exemplar_client._inputs import encode_image, to_float_list

__all__ = [
    "AdapterTrainRequest",
    "BatchInferRequest",
    "BatchInferResponse",
    "BatchSelectRequest",
    "BatchSelectResponse",
    "BuildRequest",
    "ChatCompletion",
    "ChatCompletionRequest",
    "ChatDemonstrationOut",
    "ChatExemplarIn",
    "ChatExemplarOut",
    "ChatRoundOut",
    "DemoPromptIn",
    "DemonstrationOut",
    "DiversityParams",
    "ErrorBody",
    "FusionIn",
    "HealthStatus",
    "InferDemonstrationOut",
    "InferRequest",
    "InferResponse",
    "InferRoundOut",
    "ItemIn",
    "ItemOut",
    "ItemPageOut",
    "ItemsAdded",
    "ItemsDeleteIn",
    "ItemsDeleted",
    "ItemsIn",
    "IterativeIn",
    "JobList",
    "JobOut",
    "JobState",
    "LabelNoiseIn",
    "LatencyPoint",
    "ModelCallOut",
    "ModelList",
    "ModelOut",
    "OverviewOut",
    "ReplicaOut",
    "ReplicasOut",
    "PoolCreate",
    "PoolList",
    "PoolOut",
    "PoolStatsOut",
    "PromptIn",
    "QueryAnswerOut",
    "QueryFailureOut",
    "QueryIn",
    "ReadyStatus",
    "RecentStatsOut",
    "RerankParams",
    "SERVER_SCHEMAS",
    "SearchIn",
    "SelectRequest",
    "SelectResponse",
    "ServerInfo",
    "StageOut",
    "StrategiesOut",
    "StrategyOut",
    "TrimOut",
    "VersionOut",
]

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]

# Sent as base64 text; accepted as a path, bytes or a PIL image (see _inputs.encode_image).
ImageInput = Annotated[str, BeforeValidator(encode_image)]
Vector = Annotated[List[float], BeforeValidator(to_float_list)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def wire(self) -> Dict[str, Any]:
        """The JSON body without the fields left at None: the server's defaults apply to those."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- errors ---------------------------------------------------------------------------------------

class ErrorBody(_Response):
    type: str
    message: str
    param: Optional[str] = None
    code: Optional[str] = None


# --- pools and versions ---------------------------------------------------------------------------

class PoolCreate(_Request):
    name: str
    encoder: Optional[str] = None
    embed: Optional[str] = None
    metric: Optional[str] = None
    index: Optional[str] = None
    centre: Optional[bool] = None


class VersionOut(_Response):
    version: int
    state: str
    size: int
    index: str
    source: str
    created_at: float
    current: bool
    index_stats: Optional[Dict[str, Any]] = None


class PoolOut(_Response):
    name: str
    encoder: str
    embed: str
    metric: str
    index: str
    dim: int
    current_version: Optional[int]
    size: int
    created_at: float
    centre: bool = False


class PoolStatsOut(PoolOut):
    labels: Dict[str, int]
    domains: Dict[str, int]
    versions: List[VersionOut]
    adapter: Optional[Dict[str, Any]] = None
    segments: int = 0
    deleted: int = 0


class PoolList(_Response):
    pools: List[PoolOut]


# --- items ----------------------------------------------------------------------------------------

class ItemIn(_Request):
    """One item to add: ``image`` (path, bytes or PIL image) for encoder pools, ``embedding`` for
    precomputed ones."""

    id: str
    label: Optional[str] = None
    text: Optional[str] = None
    domain: Optional[str] = None
    image: Optional[ImageInput] = None
    embedding: Optional[Vector] = None
    metadata: Optional[Dict[str, Any]] = None


class ItemsIn(_Request):
    items: List[ItemIn] = Field(min_length=1)


class ItemsAdded(_Response):
    pool: str
    version: int
    added: int
    size: int


class ItemOut(_Response):
    id: str
    label: Optional[str]
    text: Optional[str]
    image: Optional[str]
    domain: Optional[str]
    metadata: Dict[str, Any]


class ItemPageOut(_Response):
    pool: str
    version: Optional[int]
    items: List[ItemOut]
    matching: int
    next_cursor: Optional[str]


class ItemsDeleteIn(_Request):
    ids: List[str] = Field(min_length=1)


class ItemsDeleted(_Response):
    pool: str
    version: Optional[int]
    deleted: List[str]
    missing: List[str]


# --- selection ------------------------------------------------------------------------------------

class QueryIn(_Request):
    """One query: ``image`` (with ``text``, their vectors averaged), ``text``, ``embedding``,
    ``embedding_b64`` or ``item_id``."""

    image: Optional[ImageInput] = None
    text: Optional[str] = None
    embedding: Optional[Vector] = None
    embedding_b64: Optional[str] = None
    item_id: Optional[str] = None


class SearchIn(_Request):
    recall: Optional[Literal["fast", "default", "exact"]] = None
    nprobe: Optional[int] = None


class FusionIn(_Request):
    """Image+text pools: weights of the image and the text similarity (scaled to sum to 1)."""

    image: Optional[float] = None
    text: Optional[float] = None


class DiversityParams(_Request):
    """The diversity stage: MMR over the strategy's first ``depth`` candidates, near-duplicates removed.
    ``lam`` is sent as ``lambda`` (a Python keyword)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    lam: Optional[float] = Field(None, alias="lambda")
    depth: Optional[int] = None
    dedup: Optional[float] = None


class RerankParams(_Request):
    """The rerank stage: a configured model endpoint judges the strategy's first ``retrieve_k``."""

    mllm: str
    retrieve_k: Optional[int] = None
    top_n: Optional[int] = None
    min_score: Optional[float] = None
    question: Optional[str] = None
    concurrency: Optional[int] = None


class _SelectionFields(_Request):
    labels: Optional[List[str]] = None
    domains: Optional[List[str]] = None
    exclude_ids: Optional[List[str]] = None
    order: Optional[Literal["most_similar_first", "most_similar_last", "shuffle", "class_grouped"]] = None
    seed: Optional[int] = None
    offset: Optional[int] = None
    invariant_base: Optional[Literal["balanced", "topk"]] = None
    fill: Optional[bool] = None
    search: Optional[SearchIn] = None
    strategy_params: Optional[Dict[str, Any]] = None
    fusion: Optional[FusionIn] = None
    diversity: Optional[DiversityParams] = None
    rerank: Optional[RerankParams] = None


class _SelectOptions(_SelectionFields):
    strategy: Optional[str] = None
    k: Optional[int] = None
    k_per_class: Optional[int] = None


class SelectRequest(_SelectOptions):
    query: Optional[QueryIn] = None


class BatchSelectRequest(_SelectOptions):
    queries: List[QueryIn] = Field(min_length=1)
    shared: Optional[Union[bool, Literal["mean", "fixed"]]] = None
    shuffle_seed: Optional[int] = None
    reshuffle: Optional[bool] = None


class DemonstrationOut(_Response):
    id: str
    label: Optional[str]
    text: Optional[str]
    image: Optional[str]
    domain: Optional[str]
    score: Optional[float]
    rank: int
    metadata: Dict[str, Any]
    judge_score: Optional[float] = None


class SelectResponse(_Response):
    pool: str
    version: int
    encoder: str
    strategy: str
    demonstrations: List[DemonstrationOut]
    timing_ms: Dict[str, float]
    shortfall: Dict[str, int] = Field(default_factory=dict)


class BatchSelectResponse(_Response):
    shared: bool = False
    shared_mode: Optional[Literal["mean", "fixed"]] = None
    shuffle_seed: Optional[int] = None
    results: List[SelectResponse]


# --- infer ----------------------------------------------------------------------------------------

class PromptIn(_Request):
    system: Optional[str] = None
    instruction: Optional[str] = None
    demo_text: Optional[str] = None
    answer: Optional[str] = None
    query_text: Optional[str] = None
    include_images: Optional[bool] = None


class LabelNoiseIn(_Request):
    noise: float


class InferRequest(_SelectionFields):
    query: QueryIn
    mllm: str
    strategy: Optional[str] = None
    window: Optional[int] = None
    max_rounds: Optional[int] = None
    threshold: Optional[float] = None
    confidence: Optional[Literal["min_token_prob", "mean_token_logprob", "first_token_prob", "label_prob"]] = None
    prompt: Optional[PromptIn] = None
    windows: Optional[Literal["advance", "repeat_first"]] = None
    demo_labels: Optional[Union[Literal["true", "shuffled", "random"], LabelNoiseIn]] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None


class InferDemonstrationOut(DemonstrationOut):
    shown_label: Optional[str]


class InferRoundOut(_Response):
    round: int
    offset: int
    demonstrations: List[InferDemonstrationOut]
    answer: str
    confidence: float
    timing_ms: Dict[str, float]


class InferResponse(_Response):
    pool: str
    version: int
    encoder: str
    strategy: str
    mllm: str
    answer: str
    confidence: float
    stopped: Literal["confident", "max_rounds", "exhausted", "zero_shot"]
    zero_shot: bool
    chosen_round: int
    rounds: List[InferRoundOut]
    timing_ms: Dict[str, float]


class BatchInferRequest(_SelectionFields):
    """Many queries answered in few model calls (ManyICL): one demonstration set, shown with every call."""

    queries: List[QueryIn] = Field(min_length=1)
    mllm: str
    shared: Optional[Literal["fixed", "mean"]] = None
    strategy: Optional[str] = None
    k: Optional[int] = None
    k_per_class: Optional[int] = None
    shuffle_seed: Optional[int] = None
    reshuffle: Optional[bool] = None
    demo_labels: Optional[Union[Literal["true", "shuffled", "random"], LabelNoiseIn]] = None
    queries_per_call: Optional[int] = None
    prompt: Optional[PromptIn] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None


class QueryFailureOut(_Response):
    type: str
    message: str


class QueryAnswerOut(_Response):
    index: int
    call: int
    answer: Optional[str]
    error: Optional[QueryFailureOut]


class ModelCallOut(_Response):
    call: int
    queries: List[int]
    text: Optional[str]
    error: Optional[QueryFailureOut]
    timing_ms: Dict[str, float]
    shuffle_seed: Optional[int] = None
    demonstrations: List[InferDemonstrationOut] = []  # the set as this call showed it: its order, its shown labels


class BatchInferResponse(_Response):
    pool: str
    version: int
    encoder: str
    strategy: str
    mllm: str
    shared: str
    shuffle_seed: Optional[int]
    demonstrations: List[DemonstrationOut]
    shortfall: Dict[str, int]
    results: List[QueryAnswerOut]
    calls: List[ModelCallOut]
    answered: int
    failed: int
    timing_ms: Dict[str, float]


# --- builds, adapters, jobs -----------------------------------------------------------------------

class BuildRequest(_Request):
    source: str
    format: Optional[Literal["jsonl", "csv", "parquet", "imagefolder", "webdataset"]] = None
    media_root: Optional[str] = None
    mode: Optional[Literal["replace", "upsert"]] = None
    index: Optional[str] = None
    shard_size: Optional[int] = None
    batch_size: Optional[int] = None
    workers: Optional[int] = None


class AdapterTrainRequest(_Request):
    head: Optional[Literal["linear", "mlp"]] = None
    out_dim: Optional[int] = None
    hidden_dim: Optional[int] = None
    temperature: Optional[float] = None
    cross_domain_weight: Optional[float] = None
    cross_domain_only: Optional[bool] = None
    domain_loss: Optional[Literal["none", "class_mean", "adversarial"]] = None
    domain_weight: Optional[float] = None
    epochs: Optional[int] = None
    max_steps: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    val_fraction: Optional[float] = None
    patience: Optional[int] = None
    seed: Optional[int] = None


class JobOut(_Response):
    id: str
    kind: str
    pool: str
    state: JobState
    params: Dict[str, Any]
    progress: Dict[str, Any]
    result: Optional[Dict[str, Any]]
    errors: List[Dict[str, Any]]
    created_at: float
    started_at: Optional[float]
    finished_at: Optional[float]
    attempt: int = 1  # above 1 once a replica took the job over from one that stopped
    owner: Optional[str] = None  # the replica (host:pid:nonce) that holds or last held it

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")


class JobList(_Response):
    jobs: List[JobOut]


# --- operations -----------------------------------------------------------------------------------

class LatencyPoint(_Response):
    t: float
    count: int
    p50_ms: float
    p95_ms: float


class RecentStatsOut(_Response):
    window_s: float
    bucket_s: float
    requests: int
    latency: List[LatencyPoint]
    strategies: Dict[str, int]
    labels_returned: Dict[str, Dict[str, int]]


class ReplicaOut(_Response):
    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    lease_until: float
    alive: bool
    serving: Dict[str, int]


class ReplicasOut(_Response):
    answered_by: str
    catalog: str
    replicas: List[ReplicaOut]


class OverviewOut(_Response):
    pools: int
    items: int
    jobs_running: int
    jobs_failed: int
    auth: bool
    version: str
    mllm_endpoints: List[str]


# --- the OpenAI-compatible chat endpoint ----------------------------------------------------------

class DemoPromptIn(_Request):
    system: Optional[str] = None
    instruction: Optional[str] = None
    demo_text: Optional[str] = None
    answer: Optional[str] = None
    include_images: Optional[bool] = None


class IterativeIn(_Request):
    window: Optional[int] = None
    max_rounds: Optional[int] = None
    threshold: Optional[float] = None
    confidence: Optional[Literal["min_token_prob", "mean_token_logprob", "first_token_prob", "label_prob"]] = None


class ChatExemplarIn(_SelectOptions):
    """The ``exemplar`` object of a chat request: which pool, and how to select."""

    pool: str
    query: Optional[QueryIn] = None
    prompt: Optional[DemoPromptIn] = None
    iterative: Optional[IterativeIn] = None


class ChatCompletionRequest(_Request):
    """An OpenAI chat request; other OpenAI fields (``max_tokens``, ``temperature``...) pass through."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: List[Dict[str, Any]] = Field(min_length=1)
    stream: Optional[bool] = None
    exemplar: Optional[ChatExemplarIn] = None


class ChatDemonstrationOut(_Response):
    id: str
    label: Optional[str]
    score: Optional[float]
    rank: int
    judge_score: Optional[float] = None


class TrimOut(_Response):
    ids: List[str]
    reason: Literal["max_images", "max_prompt_bytes"]
    limit: int


class ChatRoundOut(_Response):
    round: int
    offset: int
    demonstrations: List[ChatDemonstrationOut]
    trimmed: Optional[TrimOut]
    answer: str
    confidence: float
    timing_ms: Dict[str, float]


class ChatExemplarOut(_Response):
    pool: str
    version: int
    encoder: str
    strategy: str
    demonstrations: List[ChatDemonstrationOut]
    trimmed: Optional[TrimOut]
    timing_ms: Dict[str, float]
    stopped: Optional[Literal["confident", "max_rounds", "exhausted"]] = None
    chosen_round: Optional[int] = None
    rounds: Optional[List[ChatRoundOut]] = None


class ChatCompletion(_Response):
    """The model's completion as it answered (every field kept: ``model_extra``), and ``exemplar``."""

    model_config = ConfigDict(extra="allow")

    id: Optional[str] = None
    object: Optional[str] = None
    choices: List[Dict[str, Any]] = Field(default_factory=list)
    exemplar: Optional[ChatExemplarOut] = None

    @property
    def content(self) -> Optional[str]:
        """The first choice's message text."""
        message = self.choices[0].get("message") if self.choices else None
        return message.get("content") if isinstance(message, dict) else None


class ModelOut(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "exemplar"


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: List[ModelOut]


# --- strategies and stages ------------------------------------------------------------------------

class StrategyOut(_Response):
    name: str
    description: str
    needs_query: bool
    takes_k_per_class: bool
    parameters: Dict[str, Any]


class StageOut(_Response):
    name: str
    description: str
    position: int
    parameters: Dict[str, Any]


class StrategiesOut(_Response):
    strategies: List[StrategyOut]
    stages: List[StageOut]


# The server answers these three with plain dicts: no component in its document to check them against.
class HealthStatus(_Response):
    status: str


class ReadyStatus(_Response):
    status: str
    pools: Optional[int] = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"


class ServerInfo(_Response):
    name: str
    version: str
    auth_required: bool


# Client model -> the server's component name in /openapi.json, for the drift test. Every model of
# this module that mirrors a server schema is listed; the three above have none on the server.
SERVER_SCHEMAS: Dict[type, str] = {
    ErrorBody: "ErrorBody",
    PoolCreate: "PoolCreate",
    VersionOut: "VersionOut",
    PoolOut: "PoolOut",
    PoolStatsOut: "PoolStatsOut",
    PoolList: "PoolList",
    ItemIn: "ItemIn",
    ItemsIn: "ItemsIn",
    ItemsAdded: "ItemsAdded",
    ItemOut: "ItemOut",
    ItemPageOut: "ItemPageOut",
    ItemsDeleteIn: "ItemsDeleteIn",
    ItemsDeleted: "ItemsDeleted",
    QueryIn: "QueryIn",
    SearchIn: "SearchIn",
    FusionIn: "FusionIn",
    SelectRequest: "SelectRequest",
    BatchSelectRequest: "BatchSelectRequest",
    DemonstrationOut: "DemonstrationOut",
    SelectResponse: "SelectResponse",
    BatchSelectResponse: "BatchSelectResponse",
    PromptIn: "PromptIn",
    InferRequest: "InferRequest",
    InferRoundOut: "InferRoundOut",
    InferResponse: "InferResponse",
    BuildRequest: "BuildRequest",
    AdapterTrainRequest: "AdapterTrainRequest",
    JobOut: "JobOut",
    JobList: "JobList",
    LatencyPoint: "LatencyPoint",
    RecentStatsOut: "RecentStatsOut",
    OverviewOut: "OverviewOut",
    ReplicaOut: "ReplicaOut",
    ReplicasOut: "ReplicasOut",
    DemoPromptIn: "DemoPromptIn",
    IterativeIn: "IterativeIn",
    ChatExemplarIn: "ChatExemplarIn",
    ChatCompletionRequest: "ChatCompletionRequest",
    ChatDemonstrationOut: "ChatDemonstrationOut",
    TrimOut: "TrimOut",
    ChatRoundOut: "ChatRoundOut",
    ChatExemplarOut: "ChatExemplarOut",
    ChatCompletion: "ChatCompletionOut",
    ModelOut: "ModelOut",
    ModelList: "ModelList",
    DiversityParams: "DiversityParams",
    RerankParams: "RerankParams",
    LabelNoiseIn: "LabelNoiseIn",
    InferDemonstrationOut: "InferDemonstrationOut",
    StrategyOut: "StrategyOut",
    StageOut: "StageOut",
    StrategiesOut: "StrategiesOut",
    BatchInferRequest: "BatchInferRequest",
    QueryFailureOut: "QueryFailureOut",
    QueryAnswerOut: "QueryAnswerOut",
    ModelCallOut: "ModelCallOut",
    BatchInferResponse: "BatchInferResponse",
}
