"""The OpenAPI document as the service really answers: every error in the one envelope.

FastAPI documents request validation failures as 422 with its own body; Exemplar answers them as
400 in the error envelope, and any operation can also meet the body limit (413), the content-type
check (415), keys (401/403) and rate limits (429). Those are added to every operation here, so
clients and schema-driven fuzzers see what the server actually sends.
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
ENVELOPE_REF = {"$ref": "#/components/schemas/ErrorEnvelope"}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    for status, description in COMMON_ERRORS.items():
                        responses.setdefault(status, {"description": description,
                                                      "content": {"application/json": {"schema": ENVELOPE_REF}}})
            schemas = schema.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
