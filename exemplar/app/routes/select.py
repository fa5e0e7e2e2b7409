from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio.to_thread
import pydantic_core
from fastapi import APIRouter
from fastapi.responses import Response

from exemplar.app.bodies import ValidatedBodyRoute
from exemplar.app.errors import ErrorEnvelope
from exemplar.app.schemas.select import (
    BatchSelectRequest,
    BatchSelectResponse,
    DemonstrationOut,
    QueryIn,
    SelectRequest,
    SelectResponse,
    vector_errors,
)
from exemplar.app.observability import Observability
from exemplar.app.services import QUERY, Services, ServicesDep
from exemplar.retrieval import Demonstration, SelectionResult
from exemplar.retrieval.serving.manyicl import draw_shuffle_seed

router = APIRouter(prefix="/v1/pools", tags=["select"], route_class=ValidatedBodyRoute, responses={
    400: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope}, 409: {"model": ErrorEnvelope},
})


def json_response(content: object) -> Response:
    """A response already in the declared model's shape (``response_model``), as plain dicts and
    lists in its field order: written by pydantic-core as it would write the model,
    without building a model object per demonstration first."""
    return Response(content=pydantic_core.to_json(content), media_type="application/json")


def demonstration_out(d: Demonstration) -> DemonstrationOut:
    # Built from the core's own typed values: nothing to validate, and a batch has hundreds of them.
    return DemonstrationOut.model_construct(**vars(d))


def _response(result: SelectionResult, started: float) -> dict[str, Any]:
    """A ``SelectResponse`` as JSON-ready data (its fields, in order)."""
    timing = dict(result.timing_ms, total=round((time.perf_counter() - started) * 1000, 3))
    return {
        "pool": result.pool, "version": result.version, "encoder": result.encoder, "strategy": result.strategy,
        # Demonstration's fields are DemonstrationOut's, in the same order.
        "demonstrations": [vars(d) for d in result.demonstrations], "timing_ms": timing,
        "shortfall": result.shortfall,
    }


def _observe(obs: Observability, result: SelectionResult, out: dict[str, Any]) -> None:
    obs.observe_selection(result.pool, result.strategy, out["timing_ms"], (d.label for d in result.demonstrations))


async def _in_select_thread(services: Services, work: Callable[[], Response], queries: Sequence[QueryIn]) -> Response:
    """Runs a selection in one of the ``select_threads`` threads kept for select and select/batch.

    A thread, not the event loop: searches release the GIL and overlap the next request's parsing,
    and concurrent searches of one index meet in its ``SearchBatcher``. A few threads, not the
    shared pool of 40: every thread more than the cores costs each request CPU in handing the GIL
    around (at concurrency 32, about twice the CPU per request of two threads). A request that
    must encode an image or a text first runs in the shared pool: an encoder's hundreds of
    milliseconds must not hold up the vector queries queued behind it."""
    encodes = any(q.image is not None or q.text is not None for q in queries)
    return await anyio.to_thread.run_sync(work, limiter=None if encodes else services.select_limiter)


@router.post("/{pool}/select", summary="Select demonstrations for one query", dependencies=[QUERY],
             response_model=SelectResponse)
async def select(pool: str, body: SelectRequest, services: ServicesDep) -> Response:
    # One dependency for both services: each dependency FastAPI solves costs the hot path.
    def work() -> Response:
        started = time.perf_counter()
        with vector_errors([body.query]):
            result = services.selection.select(pool, body.query.to_query(), body.strategy, body.to_options())
        response = _response(result, started)
        _observe(services.obs, result, response)
        return json_response(response)

    return await _in_select_thread(services, work, [body.query])


@router.post("/{pool}/select/batch", summary="Select demonstrations for many queries", dependencies=[QUERY],
             response_model=BatchSelectResponse)
async def select_batch(pool: str, body: BatchSelectRequest, services: ServicesDep) -> Response:
    mode = body.shared_mode
    # reshuffle: a fresh order per call, reported, so that any call's order can be asked for again.
    shuffle_seed = draw_shuffle_seed() if body.reshuffle else body.shuffle_seed

    def work() -> Response:
        started = time.perf_counter()
        with vector_errors(body.queries):
            results = services.selection.select_batch(pool, [q.to_query() for q in body.queries], body.strategy,
                                                      body.to_options(), shared=mode or False,
                                                      shuffle_seed=shuffle_seed)
        outs = [_response(r, started) for r in results]
        for result, out in zip(results, outs):
            _observe(services.obs, result, out)
        return json_response({"shared": mode is not None, "shared_mode": mode, "shuffle_seed": shuffle_seed,
                              "results": outs})

    return await _in_select_thread(services, work, body.queries)
