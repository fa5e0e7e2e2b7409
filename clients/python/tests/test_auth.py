"""API keys: a missing or unknown key, a key without the scope, and a rate-limited key."""

from __future__ import annotations

import pytest
from support import TIMEOUT_S, env

from exemplar_client import AuthenticationError, Exemplar, PermissionDeniedError, RateLimitError


def test_an_unknown_key_is_refused(server_url: str) -> None:
    env("EXEMPLAR_CLIENT_TEST_API_KEY")  # only where the server requires keys
    with Exemplar(server_url, api_key="not-a-key-of-this-server", timeout=TIMEOUT_S) as ex:
        assert ex.info().auth_required
        with pytest.raises(AuthenticationError) as caught:
            ex.list_pools()
    assert (caught.value.status, caught.value.type) == (401, "unauthorized")


def test_a_query_key_cannot_write(server_url: str) -> None:
    key = env("EXEMPLAR_CLIENT_TEST_QUERY_KEY")
    with Exemplar(server_url, api_key=key, timeout=TIMEOUT_S) as ex:
        ex.list_pools()
        with pytest.raises(PermissionDeniedError) as caught:
            ex.create_pool(name="never-created")
    assert (caught.value.status, caught.value.type) == (403, "forbidden")


def test_the_rate_limit_raises_without_retries_and_is_waited_out_with_them(server_url: str) -> None:
    key = env("EXEMPLAR_CLIENT_TEST_LIMITED_KEY")
    with Exemplar(server_url, api_key=key, timeout=TIMEOUT_S, max_retries=0) as ex:
        with pytest.raises(RateLimitError) as caught:
            for _ in range(3):  # the bucket holds one request: the second in a row is refused
                ex.list_pools()
    assert caught.value.status == 429 and caught.value.retry_after is not None and caught.value.retry_after >= 1
    with Exemplar(server_url, api_key=key, timeout=TIMEOUT_S, max_retries=3, max_retry_after=10) as ex:
        for _ in range(2):
            ex.list_pools()
