"""The OpenAPI document as the service really answers: every error in the one envelope, and the
limits of this server.

FastAPI documents request validation failures as 422 with its own body; Exemplar answers them as
400 in the error envelope, and any operation can also meet the body limit (413), the content-type
check (415), keys (401/403) and rate limits (429). Those are added to every operation here, so
clients and schema-driven fuzzers see what the server actually sends.

Bounds that come from settings (``max_k``, ``max_batch_queries``...) are marked in the wire models
(``exemplar.app.schemas.common.limit``) and written here with this server's values, and the
configured model endpoints are offered as examples of ``mllm``: the document says what this server
accepts, not what a default one would.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["install_openapi"]

COMMON_ERRORS = {
    "400": "Invalid request (the error envelope names the offending field in 'param')",
    "401": "Missing or unknown API key",
    "403": "The key lacks the scope this operation needs",
    "413": "Request body over the configured limit",
    "415": "Request body is not JSON",
    "429": "Rate limit reached (see Retry-After)",
}
# An operation on a pool can find it missing, or in a state that does not allow the request (no
# items yet, no adapter, a build already running, a query its encoder cannot embed).
POOL_ERRORS = {
    "404": "No such pool (or item, version or job named in the request)",
    "409": "The pool's state does not allow this request (see the error's type and message)",
}
# Requests that load a pool's encoder, which fails with 503 while its weights cannot be had.
ENCODER_BODIES = frozenset({"PoolCreate", "ItemsIn", "SelectRequest", "BatchSelectRequest", "InferRequest",
                            "ChatCompletionRequest"})
ENCODER_ERRORS = {"503": "The encoder's weights are not available on this server (the message says how to supply them)"}
ENVELOPE_REF = {"$ref": "#/components/schemas/ErrorEnvelope"}
_LIMIT_KEYWORDS = ("maximum", "maxItems")


def _limits(app: FastAPI) -> dict[str, int]:
    services = app.state.services
    limits = services.selection.limits
    return {"max_k": limits.max_k, "max_offset": limits.max_offset, "max_queries": limits.max_queries,
            "max_items": services.settings.max_items_per_request}


def _fill_limits(node: Any, limits: dict[str, int]) -> None:  # noqa: ANN401 - any JSON
    if isinstance(node, dict):
        for keyword in _LIMIT_KEYWORDS:
            name = node.pop(f"x-{keyword}", None)
            if name is not None:
                node[keyword] = limits[name]
        for value in node.values():
            _fill_limits(value, limits)
    elif isinstance(node, list):
        for value in node:
            _fill_limits(value, limits)


def _body_schema(operation: dict[str, Any]) -> str | None:
    ref = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            for path, path_item in schema.get("paths", {}).items():
                for operation in path_item.values():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    errors = dict(COMMON_ERRORS)
                    if "{pool}" in path:
                        errors.update(POOL_ERRORS)
                    if _body_schema(operation) in ENCODER_BODIES:
                        errors.update(ENCODER_ERRORS)
                    for status, description in errors.items():
                        responses.setdefault(status, {"description": description,
                                                      "content": {"application/json": {"schema": ENVELOPE_REF}}})
            schemas = schema.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            _fill_limits(schemas, _limits(app))
            endpoints = app.state.services.mllms.names()
            if endpoints and "InferRequest" in schemas:
                schemas["InferRequest"]["properties"]["mllm"]["examples"] = endpoints
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
