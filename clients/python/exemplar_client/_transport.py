"""What both clients share about talking to the server: the base URL, headers, timeout and retry
policy, and the retry loop's decisions. Only the send and the sleep differ between them."""

from __future__ import annotations

from typing import Dict, Optional, Union

import httpx

from exemplar_client._errors import APIConnectionError
from exemplar_client._operations import Call
from exemplar_client._retries import RetryPolicy
from exemplar_client._version import __version__

__all__ = ["DEFAULT_TIMEOUT", "Settings"]

# Selections answer in milliseconds, but infer waits on a model and a first select on a cold
# encoder may load weights: a minute is the server's own order of magnitude for those.
DEFAULT_TIMEOUT = 60.0


class Settings:
    """Connection settings shared by ``Exemplar`` and ``AsyncExemplar``."""

    def __init__(self, base_url: str, api_key: Optional[str], timeout: Union[float, httpx.Timeout],
                 max_retries: int, retry_backoff: float, max_retry_after: float,
                 headers: Optional[Dict[str, str]]) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.retries = RetryPolicy(max_retries=max_retries, backoff=retry_backoff, max_retry_after=max_retry_after)
        self.headers = {"user-agent": f"exemplar-client/{__version__}", "accept": "application/json",
                        **(headers or {})}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"

    def request(self, http: Union[httpx.Client, httpx.AsyncClient], call: Call) -> httpx.Request:
        return http.build_request(call.method, call.path, params=call.params, json=call.json)

    def delay_after_error(self, call: Call, exc: httpx.TransportError, attempt: int) -> float:
        """The wait before the next attempt; raises ``APIConnectionError`` when there is none."""
        delay = self.retries.after_error(exc, attempt, write=call.write) if call.retry else None
        if delay is None:
            raise APIConnectionError(f"{call.method} {call.path}: {type(exc).__name__}: {exc}") from exc
        return delay

    def delay_after_response(self, call: Call, response: httpx.Response, attempt: int) -> Optional[float]:
        """The wait before the next attempt, or None: this answer is final."""
        if not call.retry or response.status_code in call.accept:
            return None
        return self.retries.after_response(response, attempt, write=call.write)
