"""Per-request context (the request id), readable from logs and error handlers."""

from __future__ import annotations

import contextvars

__all__ = ["REQUEST_ID", "request_id"]

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("exemplar_request_id", default="-")


def request_id() -> str:
    return REQUEST_ID.get()
