"""Exceptions: one base class, one subclass per HTTP status the server uses.

The server answers every error with ``{"error": {"type", "message", "param"}}`` (plus ``code`` from
the OpenAI-compatible routes, where a model endpoint gave one); the exception carries those and the
HTTP ``status``. Answers that are not in the envelope (a proxy's HTML
page) still become the right class, with ``type`` ``"http_error"`` and the body's text as message.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

import httpx

__all__ = [
    "APIConnectionError",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "ConflictError",
    "ExemplarError",
    "GatewayTimeoutError",
    "InternalServerError",
    "JobFailedError",
    "JobTimeoutError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "UnsupportedMediaTypeError",
    "error_from_response",
    "retry_after_seconds",
]


class ExemplarError(Exception):
    """Base of every error this client raises.

    ``status`` is the HTTP status (None when no answer came: see ``APIConnectionError``); ``type``,
    ``message`` and ``param`` are the server's error envelope; ``request_id`` its ``x-request-id``."""

    def __init__(self, message: str, *, status: Optional[int] = None, type: Optional[str] = None,  # noqa: A002
                 param: Optional[str] = None, request_id: Optional[str] = None,
                 response: Optional[httpx.Response] = None, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.request_id = request_id
        self.response = response

    def __str__(self) -> str:
        where = f" (param {self.param})" if self.param else ""
        head = f"{self.status} {self.type}: " if self.status is not None else ""
        return f"{head}{self.message}{where}"


class APIConnectionError(ExemplarError):
    """No answer: the connection failed or timed out (after the retries allowed)."""


class BadRequestError(ExemplarError):
    """400: the request is invalid; ``param`` names the field."""


class AuthenticationError(ExemplarError):
    """401: no API key, or an unknown one."""


class PermissionDeniedError(ExemplarError):
    """403: the key lacks the scope, or the server does not allow the operation (builds without
    source roots, a path outside them)."""


class NotFoundError(ExemplarError):
    """404: no such pool, item, version, job or model endpoint."""


class ConflictError(ExemplarError):
    """409: the pool's state does not allow the request (exists, empty, no adapter, wrong width...)."""


class PayloadTooLargeError(ExemplarError):
    """413: the body is over the server's limit."""


class UnsupportedMediaTypeError(ExemplarError):
    """415: the body was not JSON."""


class RateLimitError(ExemplarError):
    """429: the key's rate limit; ``retry_after`` is the server's ``Retry-After`` in seconds."""

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class InternalServerError(ExemplarError):
    """5xx without a class of its own."""


class BadGatewayError(InternalServerError):
    """502: a downstream model endpoint failed (infer, chat)."""


class ServiceUnavailableError(InternalServerError):
    """503: not processed: starting, or an encoder's weights are not available."""


class GatewayTimeoutError(InternalServerError):
    """504: a downstream model endpoint timed out (infer, chat)."""


class JobFailedError(ExemplarError):
    """A job waited for ended ``failed`` or ``cancelled``; ``job`` is its final record."""

    def __init__(self, message: str, *, job: Any) -> None:  # noqa: ANN401 - a JobOut (no import cycle)
        super().__init__(message, type=f"job_{job.state}")
        self.job = job


class JobTimeoutError(ExemplarError, TimeoutError):
    """``wait`` ran out of time; the job goes on (cancel it, or wait again). ``job`` is its last record."""

    def __init__(self, message: str, *, job: Any) -> None:  # noqa: ANN401 - a JobOut
        super().__init__(message, type="job_timeout")
        self.job = job


_BY_STATUS: Dict[int, Type[ExemplarError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    429: RateLimitError,
    502: BadGatewayError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def retry_after_seconds(response: httpx.Response) -> Optional[float]:
    """``Retry-After`` in seconds, when given as a number (the server sends whole seconds)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare, and a proxy's; the backoff applies instead
    return max(0.0, seconds)


def error_from_response(response: httpx.Response) -> ExemplarError:
    """The exception for an error answer, from its envelope when it has one."""
    status = response.status_code
    type_, message, param, code = "http_error", "", None, None
    try:
        body = response.json()
    except ValueError:
        body = None
    envelope = body.get("error") if isinstance(body, dict) else None
    if isinstance(envelope, dict) and isinstance(envelope.get("message"), str):
        type_ = str(envelope.get("type") or type_)
        message = envelope["message"]
        param = envelope.get("param") if isinstance(envelope.get("param"), str) else None
        code = envelope.get("code") if isinstance(envelope.get("code"), str) else None
    else:
        message = response.text[:500] or response.reason_phrase or f"HTTP {status}"
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else ExemplarError)
    kwargs: Dict[str, Any] = dict(status=status, type=type_, param=param, code=code,
                                  request_id=response.headers.get("x-request-id"), response=response)
    if cls is RateLimitError:
        kwargs["retry_after"] = retry_after_seconds(response)
    return cls(message, **kwargs)
