"""When a failed call is tried again, and after how long. Pure decisions: the sync and async
clients share them and only sleep differently.

Which failures are retried depends on whether the call changes state:

- **Reads** (GETs, ``select``, ``select_batch``): any transport error (nothing they do can be done
  twice), 429, 502, 503 and 504.
- **Writes** (creating pools, adding or deleting items, activating versions, starting builds,
  adapters and compactions, cancelling jobs, deleting pools) and ``infer``: only what proves the
  server did not process the request: a connection that failed before the request was sent
  (``httpx.ConnectError``, ``ConnectTimeout``, ``PoolTimeout``), 429 (refused by the rate limit
  before the handler ran) and 503 (not served). A write whose answer was lost (a read timeout, a
  reset connection, a 502/504 from a proxy) may have been done: retrying ``POST .../items`` would
  write a second version, ``POST .../builds`` start a second build. Those are raised for the caller
  to check. ``infer`` is not a write, but the server already retries its model endpoint, and a 502
  or 504 from it means the model failed: repeating the loop costs model calls for the same answer.
- Never any other 4xx, nor 500: the same request gets the same answer.

Backoff is exponential with full jitter: ``uniform(0, min(max_backoff, backoff * 2**attempt))``.
A 429's ``Retry-After`` is honoured as the least wait; one longer than ``max_retry_after`` is not
waited for (the ``RateLimitError`` is raised at once, carrying ``retry_after``).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Optional

import httpx

from exemplar_client._errors import retry_after_seconds

__all__ = ["RetryPolicy"]

_READ_STATUSES = frozenset({429, 502, 503, 504})
_WRITE_STATUSES = frozenset({429, 503})
# Raised before a byte of the request went out: the server cannot have seen it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** attempt))  # noqa: S311 - jitter

    def after_error(self, exc: httpx.TransportError, attempt: int, *, write: bool) -> Optional[float]:
        """Seconds to wait before attempt ``attempt + 1`` after a transport error, or None: raise."""
        if attempt >= self.max_retries:
            return None
        if write and not isinstance(exc, _NOT_SENT):
            return None
        return self._backoff(attempt)

    def after_response(self, response: httpx.Response, attempt: int, *, write: bool) -> Optional[float]:
        """Seconds to wait before attempt ``attempt + 1`` after this answer, or None: use it."""
        status = response.status_code
        if attempt >= self.max_retries or status not in (_WRITE_STATUSES if write else _READ_STATUSES):
            return None
        delay = self._backoff(attempt)
        retry_after = retry_after_seconds(response) if status in (429, 503) else None
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            delay = max(delay, retry_after)
        return delay
