"""The one error envelope, ``{"error": {"type", "message", "param"}}``, and where statuses are decided.

Unexpected exceptions become the 500 envelope in ``RequestIdMiddleware``, where the request id is known."""

from __future__ import annotations

import json
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from exemplar.app.auth import Forbidden, RateLimited, Unauthorized
from exemplar.app.context import request_id
from exemplar.errors import (
    Conflict,
    EncoderUnavailable,
    ExemplarError,
    Incompatible,
    InvalidRequest,
    NotFound,
    NotPermitted,
    PayloadTooLarge,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
)

__all__ = ["ErrorBody", "ErrorEnvelope", "STATUS", "error_response", "install_error_handlers"]

# Most specific first: the first class an error is an instance of decides its status.
STATUS: tuple[tuple[type[ExemplarError], int], ...] = (
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotPermitted, 403),
    (RateLimited, 429),
    (NotFound, 404),
    (PayloadTooLarge, 413),
    (Conflict, 409),
    (EncoderUnavailable, 503),
    (UpstreamTimeout, 504),
    (UpstreamError, 502),
    (Incompatible, 409),
    (InvalidRequest, 400),
)

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


class ErrorBody(BaseModel):
    type: str
    message: str
    param: str | None = None
    code: str | None = Field(None, description="Only on the OpenAI-compatible routes, where the model endpoint "
                             "gave one (OpenAI's error shape); absent otherwise.")


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class EnvelopeResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error message may quote client input, and input can hold
    text (lone surrogates) that has no UTF-8 form."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(status: int, type_: str, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None, code: str | None = None) -> JSONResponse:
    body = ErrorEnvelope(error=ErrorBody(type=type_, message=message, param=param, code=code))
    return EnvelopeResponse(body.model_dump(exclude={"error": {"code"}} if code is None else None), status_code=status,
                            headers={"x-request-id": request_id(), **(headers or {})})


def status_of(exc: ExemplarError) -> int:
    if isinstance(exc, UpstreamRefused):
        return exc.status  # the endpoint's own 4xx: the caller's request is what it refused
    return next((status for cls, status in STATUS if isinstance(exc, cls)), 400)


def _param(loc: tuple[int | str, ...]) -> str | None:
    parts = [p for p in loc if p != "body"]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


async def _exemplar_error(request: Request, exc: ExemplarError) -> JSONResponse:
    headers = {}
    retry_after = exc.retry_after_s if isinstance(exc, (RateLimited, UpstreamRefused)) else None
    if retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry_after)))
    elif isinstance(exc, Unauthorized):
        headers["www-authenticate"] = "Bearer"
    code = exc.code if isinstance(exc, UpstreamRefused) else None
    return error_response(status_of(exc), exc.type, exc.message, exc.param, headers, code=code)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return error_response(400, "invalid_json", "request body is not valid JSON")
    if tuple(first.get("loc", ())) == ("body",):
        content_type = request.headers.get("content-type", "")
        if first.get("type") != "missing" and "json" not in content_type:
            return error_response(
                415, "unsupported_media_type", "send the body as JSON with 'content-type: application/json'"
            )
        if first.get("type") == "missing":
            return error_response(400, "invalid_json", "request body is missing")
        return error_response(400, "invalid_json", "request body must be a JSON object")
    message = str(first.get("msg", "invalid value"))
    # Pydantic prefixes messages from our own validators with "Value error, ".
    message = message.removeprefix("Value error, ")
    return error_response(400, "invalid_request", message, _param(tuple(first.get("loc", ()))))


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str | None:
    """Every method some route serves at this path. Starlette's own ``Allow`` names only the methods
    of the first route whose path matched, and a path such as /v1/pools has one route per method."""
    routes = request.app.router.routes
    allowed = [method for method in _METHODS
               if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)]
    return ", ".join(allowed) or None


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    # The exception's headers are part of the answer (RFC 9110 requires Allow on a 405).
    headers = {name.lower(): value for name, value in (exc.headers or {}).items()}
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        if allowed:
            headers["allow"] = allowed
    return error_response(exc.status_code, type_, message, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ExemplarError, _exemplar_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
