"""A client for OpenAI-compatible chat completions (vLLM, SGLang, llama.cpp server, TGI, OpenAI),
asking for token log-probabilities. Endpoints are configured on the server by name; requests name
one and never carry a URL."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal

import httpx

from exemplar.errors import Incompatible, InvalidRequest, NotFound, UpstreamError, UpstreamTimeout, choices

__all__ = [
    "Completion",
    "EndpointConfig",
    "MLLMClient",
    "MLLMRegistry",
    "RETRY_STATUS",
    "TokenLogprob",
    "check_generation",
    "parse_completion",
    "unknown_endpoint",
]

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclasses.dataclass(frozen=True)
class EndpointConfig:
    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 2
    backoff_s: float = 0.5
    top_logprobs: int = 5
    image_mode: Literal["data_uri", "url"] = "data_uri"
    media_url_template: str | None = None  # e.g. "https://media.example/{pool}/{image}"
    max_images: int = 32
    max_prompt_bytes: int = 20 * 1024 * 1024
    extra_body: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Calls in flight at once from this server when the endpoint judges candidates (the rerank
    # stage), over all requests: a judge is asked once per candidate, and a burst must not swamp it.
    judge_concurrency: int = 8

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
        if self.judge_concurrency < 1:
            raise ValueError("judge_concurrency must be at least 1")
        if self.image_mode == "url" and not self.media_url_template:
            raise ValueError("image_mode 'url' needs media_url_template")

    def client_options(self) -> dict[str, Any]:
        """What every HTTP client of this endpoint is made with: its URL, its key (read from the
        environment variable it names, when the client is made), its timeout, no redirects."""
        headers = {"content-type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["authorization"] = f"Bearer {key}"
        return {"base_url": self.base_url.rstrip("/"), "headers": headers, "follow_redirects": False,
                "timeout": httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0))}


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]  # (token, logprob), most likely first


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    tokens: tuple[TokenLogprob, ...]
    model: str
    latency_ms: float
    attempts: int


def parse_completion(body: Any) -> tuple[str, tuple[TokenLogprob, ...], str]:  # noqa: ANN401 - JSON
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("content is not a string")
    except (KeyError, IndexError, TypeError) as exc:
        raise UpstreamError(f"the model endpoint answered without a chat completion ({type(exc).__name__})") from None
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    if not content:
        raise UpstreamError(
            "the model endpoint returned no token logprobs; confidence needs them (vLLM, SGLang and OpenAI "
            "return them for 'logprobs': true)"
        )
    tokens = []
    try:
        for entry in content:
            top = tuple(
                sorted(((str(t["token"]), float(t["logprob"])) for t in entry.get("top_logprobs") or ()),
                       key=lambda pair: -pair[1])
            )
            logprob = float(entry["logprob"])
            if not math.isfinite(logprob) and logprob != -math.inf:
                raise ValueError("logprob is NaN")
            tokens.append(TokenLogprob(str(entry["token"]), logprob, top))
    except (KeyError, TypeError, ValueError) as exc:
        raise UpstreamError(f"the model endpoint returned malformed logprobs ({type(exc).__name__})") from None
    return text, tuple(tokens), str(body.get("model", ""))


class MLLMClient:
    def __init__(self, name: str, config: EndpointConfig, transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self.config = config
        self._http = httpx.Client(transport=transport, **config.client_options())

    def close(self) -> None:
        self._http.close()

    def complete(self, messages: list[dict[str, Any]], *, max_tokens: int, temperature: float) -> Completion:
        """One chat completion with logprobs; retries connection failures and 408/429/5xx answers."""
        payload = {
            **self.config.extra_body,
            "model": self.config.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "logprobs": True,
            "top_logprobs": self.config.top_logprobs,
        }
        body = json.dumps(payload).encode()
        if len(body) > self.config.max_prompt_bytes:
            raise Incompatible(
                f"the prompt is {len(body)} bytes, over the endpoint's limit of {self.config.max_prompt_bytes}",
                param="window",
            )
        started = time.perf_counter()
        last: Exception | None = None
        for attempt in range(1, self.config.max_retries + 2):
            if attempt > 1:
                time.sleep(self.config.backoff_s * 2 ** (attempt - 2))
            try:
                response = self._http.post("/chat/completions", content=body)
            except httpx.TimeoutException as exc:
                last = UpstreamTimeout(f"model endpoint {self.name!r} did not answer within {self.config.timeout_s:g} s")
                log.warning("mllm %s attempt %d timed out: %s", self.name, attempt, type(exc).__name__)
                continue
            except httpx.TransportError as exc:
                last = UpstreamError(f"model endpoint {self.name!r} cannot be reached ({type(exc).__name__})")
                log.warning("mllm %s attempt %d failed: %s", self.name, attempt, type(exc).__name__)
                continue
            if response.status_code in RETRY_STATUS:
                last = UpstreamError(f"model endpoint {self.name!r} answered HTTP {response.status_code}")
                log.warning("mllm %s attempt %d: HTTP %d", self.name, attempt, response.status_code)
                continue
            if response.status_code >= 400:
                raise UpstreamError(f"model endpoint {self.name!r} refused the request with HTTP {response.status_code}")
            try:
                data = response.json()
            except ValueError:
                raise UpstreamError(f"model endpoint {self.name!r} answered with something other than JSON") from None
            text, tokens, model = parse_completion(data)
            return Completion(text=text, tokens=tokens, model=model or self.config.model,
                              latency_ms=(time.perf_counter() - started) * 1000, attempts=attempt)
        assert last is not None
        raise last


def check_generation(max_tokens: int, temperature: float) -> None:
    """The generation settings a request may ask of an endpoint."""
    if not 1 <= max_tokens <= 4096:
        raise InvalidRequest("max_tokens must be between 1 and 4096", param="max_tokens")
    if not 0.0 <= temperature <= 2.0:
        raise InvalidRequest("temperature must be between 0 and 2", param="temperature")


def unknown_endpoint(name: str, endpoints: Mapping[str, Any], *, noun: str, param: str) -> NotFound:
    """The error for a name that no configured endpoint has; it lists the configured ones. Which
    endpoints exist is the server's configuration, as which pools exist is its data: a 404."""
    configured = choices(endpoints) if endpoints else "none are configured (EXEMPLAR_MLLM_ENDPOINTS)"
    return NotFound(f"unknown {noun} {name!r}; configured: {configured}", param=param)


class MLLMRegistry:
    """The configured endpoints, each with one shared client."""

    def __init__(self, endpoints: dict[str, EndpointConfig]) -> None:
        self.endpoints = dict(endpoints)
        self._clients: dict[str, MLLMClient] = {}
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(self.endpoints)

    def get(self, name: str) -> MLLMClient:
        config = self.endpoints.get(name)
        if config is None:
            raise unknown_endpoint(name, self.endpoints, noun="model endpoint", param="mllm")
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                client = self._clients[name] = MLLMClient(name, config)
            return client

    def slots(self, name: str) -> threading.BoundedSemaphore:
        """The endpoint's judge calls in flight, at most its ``judge_concurrency``: one semaphore per
        endpoint, shared by every request of this process."""
        config = self.get(name).config
        with self._lock:
            slots = self._slots.get(name)
            if slots is None:
                slots = self._slots[name] = threading.BoundedSemaphore(config.judge_concurrency)
            return slots

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
