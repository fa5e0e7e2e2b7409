"""Typed Python client for the Exemplar demonstration retrieval service.

    from exemplar_client import Exemplar

    with Exemplar("http://127.0.0.1:8000", api_key="...") as ex:
        result = ex.select("demo", query={"item_id": "site-a-circle-0000"}, strategy="balanced", k=8)
        for d in result.demonstrations:
            print(d.id, d.label, d.score)

``AsyncExemplar`` has the same methods, awaited. Models are in ``exemplar_client.models``.
"""

from exemplar_client._async_client import AsyncExemplar
from exemplar_client._client import Exemplar
from exemplar_client._errors import (
    APIConnectionError,
    AuthenticationError,
    BadGatewayError,
    BadRequestError,
    ConflictError,
    ExemplarError,
    GatewayTimeoutError,
    InternalServerError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
)
from exemplar_client._jobs import AsyncJob, Job
from exemplar_client._version import __version__
from exemplar_client.models import (
    AdapterTrainRequest,
    BatchSelectRequest,
    BatchSelectResponse,
    BuildRequest,
    DemonstrationOut,
    InferRequest,
    InferResponse,
    ItemIn,
    ItemOut,
    ItemPageOut,
    JobOut,
    PoolOut,
    PoolStatsOut,
    PromptIn,
    QueryIn,
    SearchIn,
    SelectRequest,
    SelectResponse,
)

__all__ = [
    "APIConnectionError",
    "AdapterTrainRequest",
    "AsyncExemplar",
    "AsyncJob",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "BatchSelectRequest",
    "BatchSelectResponse",
    "BuildRequest",
    "ConflictError",
    "DemonstrationOut",
    "Exemplar",
    "ExemplarError",
    "GatewayTimeoutError",
    "InferRequest",
    "InferResponse",
    "InternalServerError",
    "ItemIn",
    "ItemOut",
    "ItemPageOut",
    "Job",
    "JobFailedError",
    "JobOut",
    "JobTimeoutError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PoolOut",
    "PoolStatsOut",
    "PromptIn",
    "QueryIn",
    "RateLimitError",
    "SearchIn",
    "SelectRequest",
    "SelectResponse",
    "ServiceUnavailableError",
    "UnsupportedMediaTypeError",
    "__version__",
]
