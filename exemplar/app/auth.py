"""API keys with scopes, stored as SHA-256 hashes and compared in constant time; per-key rate limits.

Keys come from ``EXEMPLAR_API_KEYS`` as JSON: ``[{"name": "pipeline", "sha256": "<hex>", "scopes":
["query"], "rate_per_s": 100, "burst": 200}]`` (``exemplar hash-key`` makes the hash; a plain
``"key"`` is accepted and hashed at start-up). Scopes: ``query`` (read and select) and ``admin``
(everything, including writes, jobs and the dashboard's data). With no keys configured every
request is allowed, and ``exemplar serve`` refuses to listen beyond loopback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import Request
from pydantic import BaseModel, Field, model_validator

from exemplar.errors import ExemplarError

__all__ = ["ApiKeyConfig", "Authenticator", "Forbidden", "Principal", "RateLimited", "Unauthorized", "hash_key",
           "require_scope"]

Scope = Literal["query", "admin"]


class Unauthorized(ExemplarError):
    type = "unauthorized"


class Forbidden(ExemplarError):
    type = "forbidden"


class RateLimited(ExemplarError):
    type = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ApiKeyConfig(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the key, hex.")
    key: str | None = Field(None, min_length=16, description="The key itself (hashed at start-up; prefer sha256).")
    scopes: list[Scope] = Field(default_factory=lambda: ["query"])
    rate_per_s: float | None = Field(None, gt=0, description="Sustained requests per second; None: unlimited.")
    burst: int | None = Field(None, ge=1, description="Bucket size; default: max(1, 2 x rate_per_s).")

    @model_validator(mode="after")
    def _one_secret(self) -> "ApiKeyConfig":
        if (self.sha256 is None) == (self.key is None):
            raise ValueError("give exactly one of 'sha256' and 'key'")
        return self


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]


ANONYMOUS = Principal("anonymous", frozenset({"query", "admin"}))


class _Bucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.capacity = rate, float(burst)
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> float:
        """0 when a token was taken; otherwise the seconds until one is there."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Authenticator:
    def __init__(self, keys: list[ApiKeyConfig]) -> None:
        self._keys = [(k, bytes.fromhex(k.sha256 or hash_key(k.key or ""))) for k in keys]
        self._buckets = {k.name: _Bucket(k.rate_per_s, k.burst or max(1, math.ceil(2 * k.rate_per_s)))
                         for k in keys if k.rate_per_s}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for config, stored in self._keys:  # every key compared, in constant time, whichever matches
            if hmac.compare_digest(digest, stored):
                found = config
        if found is None:
            return None
        scopes = set(found.scopes) | ({"query"} if "admin" in found.scopes else set())
        return Principal(found.name, frozenset(scopes))

    def throttle(self, principal: Principal) -> None:
        bucket = self._buckets.get(principal.name)
        if bucket is None:
            return
        with self._lock:
            wait = bucket.take()
        if wait:
            raise RateLimited(f"rate limit of key {principal.name!r} exceeded; retry after {math.ceil(wait)} s",
                              retry_after_s=wait)


def _presented(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


def require_scope(scope: Scope) -> Callable[[Request], Awaitable[Principal]]:
    # A coroutine: it never blocks (a hash and a lock held for a few instructions), and FastAPI
    # would run a plain function in its thread pool, a hop per request.
    async def dependency(request: Request) -> Principal:
        auth: Authenticator = request.app.state.services.auth
        if not auth.enabled:
            return ANONYMOUS
        principal = auth.authenticate(_presented(request))
        if principal is None:
            raise Unauthorized("a valid API key is needed: 'Authorization: Bearer <key>'")
        if scope not in principal.scopes:
            raise Forbidden(f"key {principal.name!r} lacks the {scope!r} scope")
        auth.throttle(principal)
        request.state.principal = principal.name
        return principal

    return dependency
