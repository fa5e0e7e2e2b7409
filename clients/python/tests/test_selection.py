"""select and select_batch against the real server, chunking included."""

from __future__ import annotations

import base64
import struct

import pytest

from exemplar_client import BadRequestError, BatchSelectRequest, ConflictError, Exemplar, NotFoundError, QueryIn

Pool = tuple[str, list[dict]]


def test_select_by_item_and_by_vector_agree(client: Exemplar, vector_pool: Pool) -> None:
    name, items = vector_pool
    by_item = client.select(name, query={"item_id": "v005"}, k=5)
    assert by_item.pool == name and by_item.strategy == "topk" and len(by_item.demonstrations) == 5
    assert "v005" not in [d.id for d in by_item.demonstrations]  # a pool item never selects itself
    by_vector = client.select(name, {"query": {"embedding": items[5]["embedding"]}, "k": 5})
    b64 = base64.b64encode(struct.pack(f"<{len(items[5]['embedding'])}f", *items[5]["embedding"])).decode()
    by_b64 = client.select(name, query=QueryIn(embedding_b64=b64), k=5)
    assert by_vector.demonstrations[0].id == "v005"
    assert [d.id for d in by_vector.demonstrations[1:]] == [d.id for d in by_item.demonstrations[:4]]
    assert [d.id for d in by_b64.demonstrations] == [d.id for d in by_vector.demonstrations]


def test_balanced_windows_and_shortfall(client: Exemplar, vector_pool: Pool) -> None:
    name, _ = vector_pool
    first = client.select(name, query={"item_id": "v000"}, strategy="balanced", k_per_class=2)
    assert sorted(d.label for d in first.demonstrations) == ["ant", "ant", "bee", "bee", "cat", "cat"]
    second = client.select(name, query={"item_id": "v000"}, strategy="balanced", k_per_class=2, offset=6)
    assert not {d.id for d in first.demonstrations} & {d.id for d in second.demonstrations}
    short = client.select(name, query={"item_id": "v000"}, strategy="balanced", k_per_class=15,
                          labels=["ant", "bee"], domains=["site-a"])
    # 10 of each label in site-a, less the query item itself (an ant)
    assert short.shortfall == {"ant": 6, "bee": 5}


def test_select_errors(client: Exemplar, vector_pool: Pool) -> None:
    name, _ = vector_pool
    with pytest.raises(BadRequestError) as caught:
        client.select(name, query={"item_id": "v000"}, k=0)
    assert (caught.value.status, caught.value.type, caught.value.param) == (400, "invalid_request", "k")
    with pytest.raises(ConflictError) as conflict:
        client.select(name, query={"embedding": [1.0, 2.0]})
    assert conflict.value.param == "query.embedding"
    with pytest.raises(NotFoundError) as missing:
        client.select("no-such-pool-here", query={"item_id": "v000"})
    assert missing.value.param == "pool"


def _batch(items: list[dict], n: int, **options: object) -> BatchSelectRequest:
    queries = [{"embedding": items[i % len(items)]["embedding"]} for i in range(n)]
    return BatchSelectRequest(queries=queries, **options)


@pytest.mark.parametrize("strategy", ["topk", "balanced", "random"])
def test_a_chunked_batch_equals_the_unchunked_one(client: Exemplar, vector_pool: Pool, strategy: str) -> None:
    name, items = vector_pool
    options = {"k": 4} if strategy == "topk" else {"k_per_class": 1}
    request = _batch(items, 10, strategy=strategy, seed=3, **options)
    whole = client.select_batch(name, request, chunk_size=256)
    chunked = client.select_batch(name, request, chunk_size=3)
    assert len(chunked.results) == len(whole.results) == 10

    def ids(response: object) -> list[list[str]]:
        return [[d.id for d in r.demonstrations] for r in response.results]  # type: ignore[attr-defined]

    def scores(response: object) -> list[float | None]:
        return [d.score for r in response.results for d in r.demonstrations]  # type: ignore[attr-defined]

    assert ids(chunked) == ids(whole)
    # Within float32 rounding: a search over 3 queries sums in another order than one over 10.
    assert scores(chunked) == pytest.approx(scores(whole), abs=1e-5)


def test_batches_over_the_server_limit_are_chunked(client: Exemplar, vector_pool: Pool) -> None:
    name, items = vector_pool
    request = _batch(items, 300, k=2)
    with pytest.raises(BadRequestError) as caught:  # the server's limit, 256 by default
        client.select_batch(name, request, chunk_size=300)
    assert caught.value.param == "queries"
    results = client.select_batch(name, request).results
    assert len(results) == 300
    assert [r.demonstrations[0].id for r in results] == [items[i % len(items)]["id"] for i in range(300)]


def test_a_shared_batch(client: Exemplar, vector_pool: Pool) -> None:
    name, _ = vector_pool
    shared = client.select_batch(name, queries=[{"item_id": "v000"}, {"item_id": "v003"}], shared=True, k=3)
    assert shared.shared and len(shared.results) == 2
    assert shared.results[0].demonstrations == shared.results[1].demonstrations
    assert not {"v000", "v003"} & {d.id for d in shared.results[0].demonstrations}
    with pytest.raises(ValueError):
        client.select_batch(name, queries=[{"item_id": "v000"}] * 3, shared=True, chunk_size=2)


def test_strategies_stages_and_their_parameters(client: Exemplar, vector_pool: Pool) -> None:
    listed = client.list_strategies()
    assert {"topk", "balanced"} <= {s.name for s in listed.strategies}
    assert "lambda" in next(s for s in listed.stages if s.name == "diversity").parameters["properties"]
    name, items = vector_pool
    query = {"embedding": items[0]["embedding"]}
    plain = client.select(name, query=query, k=6)
    diverse = client.select(name, query=query, k=6, diversity={"lam": 0.0, "depth": 30})
    assert {d.id for d in diverse.demonstrations} != {d.id for d in plain.demonstrations}
    same = client.select(name, query=query, k=6, diversity={"lambda": 1.0, "depth": 30})
    assert [d.id for d in same.demonstrations] == [d.id for d in plain.demonstrations]
    with pytest.raises(BadRequestError) as refused:
        client.select(name, query=query, k=6, strategy="topk", strategy_params={"base": "topk"})
    assert refused.value.param == "strategy_params"
