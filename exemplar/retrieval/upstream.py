"""Forwarding OpenAI chat-completion requests to a configured model endpoint, asynchronously: whole
answers and server-sent event streams.

A proxy in front of a model server holds many slow calls at once, so these calls are async on one
connection pool per endpoint rather than a thread each (``MLLMClient`` serves the infer loop, which
runs in a worker thread anyway).

Retries follow the endpoint's ``max_retries`` and ``backoff_s``: connection failures, and answers
that say the request was not processed (408, 429, 5xx), before any byte of a stream has been passed
on. A read timeout is not retried: the endpoint may still be working on it, and the caller asked
for an answer within ``timeout_s``, not several of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from exemplar.errors import UpstreamError, UpstreamRefused, UpstreamTimeout
from exemplar.retrieval.mllm import RETRY_STATUS, EndpointConfig, unknown_endpoint

__all__ = ["ChatUpstream", "ChatUpstreams", "UpstreamAnswer", "UpstreamStream"]

log = logging.getLogger(__name__)

# The endpoint's answers that are about Exemplar's configuration (its key, base_url, model name),
# not about the caller's request: they become a 502, not the endpoint's own status.
_CONFIGURATION_STATUS = {401, 403, 404}
# A Retry-After longer than this is passed on to the caller instead of waited out here.
_MAX_RETRY_AFTER_S = 5.0
_MESSAGE_CHARS = 1000


@dataclasses.dataclass(frozen=True)
class UpstreamAnswer:
    body: dict[str, Any]
    latency_ms: float
    attempts: int


class UpstreamStream:
    """An open server-sent event stream: its bytes exactly as the endpoint sends them."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.content_type = response.headers.get("content-type", "text/event-stream")

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.TransportError as exc:
            # Headers are sent by now: the caller sees the stream end early, and the log says why.
            log.warning("model stream ended early: %s", type(exc).__name__)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


class ChatUpstream:
    """One configured endpoint's ``/chat/completions``."""

    def __init__(self, name: str, config: EndpointConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.config = config
        # No cap on connections: each is a caller waiting on its own model call.
        self._http = httpx.AsyncClient(transport=transport, **config.client_options(),
                                       limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    def payload(self, body: dict[str, Any]) -> dict[str, Any]:
        """The request as the endpoint gets it: its configured defaults, the caller's fields, and the
        endpoint's own model name in place of the configured name the caller used."""
        return {**self.config.extra_body, **body, "model": self.config.model}

    async def complete(self, content: bytes) -> UpstreamAnswer:
        started = time.perf_counter()
        response, attempts = await self._send(content, stream=False)
        try:
            body = response.json()
        except ValueError:
            raise UpstreamError(f"model endpoint {self.name!r} answered with something other than JSON") from None
        if not isinstance(body, dict):
            raise UpstreamError(f"model endpoint {self.name!r} answered JSON that is not a chat completion")
        return UpstreamAnswer(body, (time.perf_counter() - started) * 1000, attempts)

    async def stream(self, content: bytes) -> UpstreamStream:
        response, _ = await self._send(content, stream=True)
        return UpstreamStream(response)

    async def _send(self, content: bytes, *, stream: bool) -> tuple[httpx.Response, int]:
        attempts = self.config.max_retries + 1
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            request = self._http.build_request("POST", "/chat/completions", content=content)
            try:
                response = await self._http.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                # Not sent, or the connection was dropped before an answer: safe to send again.
                if last:
                    raise UpstreamError(f"model endpoint {self.name!r} cannot be reached ({type(exc).__name__})") from None
                log.warning("chat upstream %s attempt %d failed: %s", self.name, attempt, type(exc).__name__)
                await asyncio.sleep(self.config.backoff_s * 2 ** (attempt - 1))
                continue
            except httpx.TimeoutException:
                raise UpstreamTimeout(f"model endpoint {self.name!r} did not answer within "
                                      f"{self.config.timeout_s:g} s") from None
            except httpx.TransportError as exc:
                raise UpstreamError(f"model endpoint {self.name!r} failed ({type(exc).__name__})") from None
            if response.status_code < 400:
                return response, attempt
            await response.aread()
            await response.aclose()
            wait = _retry_after(response) if response.status_code == 429 else None
            retry = response.status_code in RETRY_STATUS and not last and (wait is None or wait <= _MAX_RETRY_AFTER_S)
            if not retry:
                raise self._refusal(response)
            log.warning("chat upstream %s attempt %d: HTTP %d", self.name, attempt, response.status_code)
            await asyncio.sleep(wait if wait is not None else self.config.backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _refusal(self, response: httpx.Response) -> UpstreamError:
        status = response.status_code
        error: dict[str, Any] = {}
        try:
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                error = body["error"]
            elif isinstance(body, dict) and isinstance(body.get("error"), str):
                error = {"message": body["error"]}
        except ValueError:
            pass
        said = str(error.get("message") or "")[:_MESSAGE_CHARS]
        message = f"model endpoint {self.name!r} answered HTTP {status}" + (f": {said}" if said else "")
        if status >= 500 or status in _CONFIGURATION_STATUS:
            return UpstreamError(message)
        if status == 408:
            return UpstreamTimeout(message)
        param, type_, code = (error.get(key) for key in ("param", "type", "code"))
        return UpstreamRefused(
            message, status=status, param=str(param) if param is not None else None,
            type_=str(type_) if type_ else None, code=str(code) if code is not None else None,
            retry_after_s=_retry_after(response) if status == 429 else None,
        )

    async def aclose(self) -> None:
        await self._http.aclose()


class ChatUpstreams:
    """The configured endpoints by name, each with one async connection pool, made on first use."""

    def __init__(self, endpoints: dict[str, EndpointConfig], transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.endpoints = dict(endpoints)
        self._transport = transport
        self._clients: dict[str, ChatUpstream] = {}

    def names(self) -> list[str]:
        return sorted(self.endpoints)

    def get(self, name: str) -> ChatUpstream:
        # Only ever called on the event loop's thread: no lock needed.
        client = self._clients.get(name)
        if client is None:
            config = self.endpoints.get(name)
            if config is None:
                raise unknown_endpoint(name, self.endpoints, noun="model", param="model")
            client = self._clients[name] = ChatUpstream(name, config, self._transport)
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
