"""ASGI middleware: request ids and the request body limit."""

from __future__ import annotations

import logging
import re
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exemplar.app.context import REQUEST_ID
from exemplar.app.errors import error_response

__all__ = ["BodyLimitMiddleware", "RequestIdMiddleware"]

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Takes a well-formed ``x-request-id`` from the client or makes one and echoes it back; turns
    an unexpected exception into the 500 envelope while the request id is still known."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(rid)

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("internal error handling %s %s (request id %s)", scope.get("method"), scope.get("path"), rid)
            if started:
                raise
            response = error_response(500, "internal_error", f"internal error (request id {rid})")
            await response(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` by their declared length, or once that many bytes arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body exceeds the limit of {self.max_bytes} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(413, "payload_too_large", message)(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI passes HTTPExceptions raised while reading the body through unchanged.
                    raise HTTPException(413, message)
            return msg

        await self.app(scope, limited_receive, send)
