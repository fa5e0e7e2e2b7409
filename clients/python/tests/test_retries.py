"""Retries and error mapping against a scripted loopback server: which failures are tried again,
how often, and what is raised when they are not."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from stub_server import Reply, envelope, stub_server

from exemplar_client import (
    APIConnectionError,
    AsyncExemplar,
    BadGatewayError,
    BadRequestError,
    Exemplar,
    ExemplarError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
)
from exemplar_client._retries import RetryPolicy

POOL = {"name": "p", "encoder": "precomputed:4", "embed": "image", "metric": "ip", "index": "auto", "dim": 4,
        "current_version": 1, "size": 3, "created_at": 1.0}
UNAVAILABLE = Reply(503, envelope("encoder_unavailable", "weights are loading"))


def client(url: str, **kwargs: object) -> Exemplar:
    # A tiny backoff keeps the tests quick; what is asserted is the number of attempts.
    return Exemplar(url, timeout=10, retry_backoff=0.01, **kwargs)  # type: ignore[arg-type]


def test_a_read_is_retried_after_503_and_succeeds() -> None:
    with stub_server([UNAVAILABLE, Reply(200, {"pools": [POOL]})]) as stub, client(stub.url) as ex:
        pools = ex.list_pools()
    assert [p.name for p in pools] == ["p"]
    assert len(stub.requests) == 2


@pytest.mark.parametrize("status", [502, 504])
def test_a_read_is_retried_after_a_gateway_error(status: int) -> None:
    item = {"id": "a", "label": "x", "text": None, "image": None, "domain": None, "metadata": {}}
    with stub_server([Reply(status, b"<html>bad gateway</html>"), Reply(200, item)]) as stub, client(stub.url) as ex:
        assert ex.get_item("p", "a").label == "x"
    assert len(stub.requests) == 2


def test_429_with_retry_after_is_retried() -> None:
    script = [Reply(429, envelope("rate_limited", "slow down"), {"retry-after": "1"}), Reply(200, {"status": "ok"})]
    with stub_server(script) as stub, client(stub.url) as ex:
        assert ex.health().status == "ok"
    assert len(stub.requests) == 2


def test_retry_after_is_the_least_wait() -> None:
    response = httpx.Response(429, headers={"retry-after": "5"})
    for attempt in range(3):
        delay = RetryPolicy(max_retries=3, backoff=0.01).after_response(response, attempt, write=True)
        assert delay is not None and delay >= 5


def test_retry_after_beyond_the_limit_is_raised_at_once() -> None:
    script = [Reply(429, envelope("rate_limited", "come back later"), {"retry-after": "120"}),
              Reply(200, {"status": "ok"})]
    with stub_server(script) as stub, client(stub.url, max_retry_after=30) as ex:
        with pytest.raises(RateLimitError) as caught:
            ex.health()
    assert caught.value.status == 429 and caught.value.retry_after == 120
    assert caught.value.type == "rate_limited"
    assert len(stub.requests) == 1


def test_400_is_never_retried_and_carries_the_envelope() -> None:
    script = [Reply(400, envelope("invalid_request", "k must be at least 1", "k"), {"x-request-id": "r1"}),
              Reply(200, {})]
    with stub_server(script) as stub, client(stub.url, max_retries=5) as ex:
        with pytest.raises(BadRequestError) as caught:
            ex.select("p", query={"item_id": "a"}, k=0)
    error = caught.value
    assert (error.status, error.type, error.message, error.param) == (400, "invalid_request", "k must be at least 1", "k")
    assert error.request_id == "r1" and isinstance(error, ExemplarError)
    assert len(stub.requests) == 1


def test_404_and_500_are_not_retried() -> None:
    with stub_server([Reply(404, envelope("not_found", "no pool 'x'", "pool"))]) as stub, client(stub.url) as ex:
        with pytest.raises(NotFoundError):
            ex.get_pool("x")
    assert len(stub.requests) == 1
    with stub_server([Reply(500, envelope("internal_error", "boom"))]) as stub, client(stub.url) as ex:
        with pytest.raises(InternalServerError) as caught:
            ex.get_pool("x")
    assert caught.value.status == 500 and len(stub.requests) == 1


def test_retries_stop_after_max_retries() -> None:
    with stub_server([UNAVAILABLE]) as stub, client(stub.url, max_retries=2) as ex:
        with pytest.raises(ServiceUnavailableError) as caught:
            ex.get_pool("p")
    assert caught.value.type == "encoder_unavailable"
    assert len(stub.requests) == 3


def test_a_write_is_retried_after_503_which_means_not_processed() -> None:
    added = {"pool": "p", "version": 2, "added": 1, "size": 4}
    with stub_server([UNAVAILABLE, Reply(200, added)]) as stub, client(stub.url) as ex:
        result = ex.add_items("p", [{"id": "a", "embedding": [1, 0, 0, 0]}])
    assert result.version == 2 and len(stub.requests) == 2
    assert stub.requests[0]["body"] == stub.requests[1]["body"]


def test_a_write_is_not_retried_after_502_it_may_have_been_done() -> None:
    with stub_server([Reply(502, b"proxy error"), Reply(201, POOL)]) as stub, client(stub.url) as ex:
        with pytest.raises(BadGatewayError) as caught:
            ex.create_pool(name="p", encoder="precomputed:4")
    assert caught.value.type == "http_error" and "proxy error" in caught.value.message
    assert len(stub.requests) == 1


def test_a_lost_answer_is_retried_for_a_read_not_for_a_write() -> None:
    stats = {**POOL, "labels": {}, "domains": {}, "versions": []}
    with stub_server([Reply(200, drop=True), Reply(200, stats)]) as stub, client(stub.url) as ex:
        assert ex.get_pool("p").name == "p"
    assert len(stub.requests) == 2
    with stub_server([Reply(200, drop=True), Reply(200, POOL)]) as stub, client(stub.url) as ex:
        with pytest.raises(APIConnectionError) as caught:
            ex.activate_version("p", 1)
    assert caught.value.status is None
    assert len(stub.requests) == 1


def test_the_policy_retries_writes_only_when_nothing_was_sent() -> None:
    policy = RetryPolicy(max_retries=2)
    request = httpx.Request("POST", "http://127.0.0.1/")
    assert policy.after_error(httpx.ConnectError("refused", request=request), 0, write=True) is not None
    assert policy.after_error(httpx.ReadTimeout("slow", request=request), 0, write=True) is None
    assert policy.after_error(httpx.ReadTimeout("slow", request=request), 0, write=False) is not None
    assert policy.after_error(httpx.ConnectError("refused", request=request), 2, write=True) is None


def test_a_refused_connection_raises_after_the_retries() -> None:
    with stub_server([Reply(200, {})]) as stub:
        url = stub.url
    with client(url, max_retries=1) as ex:  # the port is closed now
        with pytest.raises(APIConnectionError):
            ex.health()


def test_the_api_key_is_sent_as_a_bearer_token() -> None:
    with stub_server([Reply(200, {"status": "ok"})]) as stub, client(stub.url, api_key="s3cret") as ex:
        ex.health()
    assert stub.requests[0]["headers"].get("authorization") == "Bearer s3cret"


def test_the_async_client_retries_the_same_way() -> None:
    async def run(url: str) -> tuple[str, type[BaseException] | None]:
        async with AsyncExemplar(url, timeout=10, retry_backoff=0.01) as ex:
            status = (await ex.health()).status
            try:
                await ex.select("p", query={"item_id": "a"})
            except ExemplarError as exc:
                return status, type(exc)
        return status, None

    script = [UNAVAILABLE, Reply(200, {"status": "ok"}), Reply(400, envelope("invalid_request", "no", "query"))]
    with stub_server(script) as stub:
        assert asyncio.run(run(stub.url)) == ("ok", BadRequestError)
    assert len(stub.requests) == 3


def test_ready_reports_starting_without_retrying() -> None:
    with stub_server([Reply(503, {"status": "starting"}), Reply(200, {"status": "ready", "pools": 1})]) as stub, \
            client(stub.url) as ex:
        status = ex.ready()
    assert (status.status, status.ready) == ("starting", False)
    assert len(stub.requests) == 1
