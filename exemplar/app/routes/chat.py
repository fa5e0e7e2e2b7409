"""The OpenAI-compatible endpoints: ``POST /v1/chat/completions`` (with demonstrations when the request
carries an ``exemplar`` object) and ``GET /v1/models`` (the configured endpoints)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from exemplar.app.errors import ErrorEnvelope
from exemplar.app.observability import Observability
from exemplar.app.schemas.chat import ChatCompletionOut, ChatCompletionRequest, ModelList, ModelOut
from exemplar.app.services import QUERY, ChatDep, ObsDep
from exemplar.errors import ExemplarError
from exemplar.retrieval.chat import ChatReport, Trim
from exemplar.retrieval.serving.selection import Demonstration

router = APIRouter(prefix="/v1", tags=["openai"], responses={
    400: {"model": ErrorEnvelope},
    404: {"model": ErrorEnvelope, "description": "'model' names no configured endpoint (the error lists them), or "
          "the exemplar object names no pool or item"},
    409: {"model": ErrorEnvelope},
    502: {"model": ErrorEnvelope, "description": "The model endpoint failed, could not be reached, or refused "
          "Exemplar's configuration (key, base_url, model name)"},
    504: {"model": ErrorEnvelope, "description": "The model endpoint did not answer in time"},
})
# Kept well under common proxies' 8 KB header limits; a longer report is cut to its ids.
_HEADER_BYTES = 6_000


def _demonstration(d: Demonstration) -> dict[str, Any]:
    out = {"id": d.id, "label": d.label, "score": d.score, "rank": d.rank}
    if d.judge_score is not None:  # only with rerank: the report stays as it was without it
        out["judge_score"] = d.judge_score
    return out


def _trim(trim: Trim | None) -> dict[str, Any] | None:
    return None if trim is None else {"ids": trim.ids, "reason": trim.reason, "limit": trim.limit}


def report_out(report: ChatReport) -> dict[str, Any]:
    """A ``ChatExemplarOut``, as JSON-ready data."""
    out: dict[str, Any] = {
        "pool": report.pool, "version": report.version, "encoder": report.encoder, "strategy": report.strategy,
        "demonstrations": [_demonstration(d) for d in report.demonstrations], "trimmed": _trim(report.trimmed),
        "timing_ms": report.timing_ms, "stopped": report.stopped, "chosen_round": report.chosen_round,
        "rounds": None,
    }
    if report.rounds is not None:
        out["rounds"] = [{"round": r.round, "offset": r.offset, "demonstrations": [_demonstration(d) for d in r.demonstrations],
                          "trimmed": _trim(r.trimmed), "answer": r.answer, "confidence": r.confidence,
                          "timing_ms": r.timing_ms} for r in report.rounds]
    return out


def _observe(obs: Observability, report: ChatReport | None) -> None:
    """The selection in the dashboard's statistics, as select's are: its own time (encoding and
    selection), not the model's, which would swamp the selection latencies."""
    if report is None:
        return
    timing = report.timing_ms
    obs.observe_selection(report.pool, report.strategy,
                          {"total": timing["encode"] + timing["select"], "encode": timing["encode"],
                           "search": timing["select"]},
                          (d.label for d in report.demonstrations))


@contextlib.contextmanager
def _query_vector_errors(body: ChatCompletionRequest) -> Iterator[None]:
    """The core names the query's vector 'exemplar.query.embedding'; one sent as 'embedding_b64'
    is named so, as select names it."""
    try:
        yield
    except ExemplarError as exc:
        query = body.exemplar.query if body.exemplar is not None else None
        if exc.param == "exemplar.query.embedding" and query is not None and query.embedding_b64 is not None:
            exc.param = "exemplar.query.embedding_b64"
        raise


def _header(report: ChatReport) -> str:
    out = report_out(report)
    text = json.dumps(out, separators=(",", ":"))  # ASCII: header values are latin-1
    if len(text) > _HEADER_BYTES:
        out = {key: out[key] for key in ("pool", "version", "strategy")}
        out["ids"] = [d.id for d in report.demonstrations]
        text = json.dumps(out, separators=(",", ":"))[:_HEADER_BYTES]
    return text


@router.post("/chat/completions", summary="OpenAI-compatible chat completion, with demonstrations added",
             dependencies=[QUERY], response_model=None,
             responses={200: {"model": ChatCompletionOut, "content": {"text/event-stream": {}},
                              "description": "The model's completion (or its event stream, for stream true), plus "
                              "'exemplar' when demonstrations were selected."}})
async def chat_completions(body: ChatCompletionRequest, service: ChatDep, obs: ObsDep) -> Response:
    with _query_vector_errors(body):
        how = body.exemplar.to_selection() if body.exemplar is not None else None
        if body.stream:
            stream, report = await service.stream(body.upstream_body(), how)
            _observe(obs, report)
            headers = {"x-exemplar": _header(report)} if report is not None else {}
            return StreamingResponse(stream.chunks(), media_type=stream.content_type, headers=headers,
                                     background=BackgroundTask(stream.aclose))
        reply = await service.complete(body.upstream_body(), how)
    _observe(obs, reply.report)
    if reply.report is None:
        return JSONResponse(reply.body)
    return JSONResponse({**reply.body, "exemplar": report_out(reply.report)})


@router.get("/models", summary="The configured model endpoints, as OpenAI models", dependencies=[QUERY])
async def models(service: ChatDep) -> ModelList:
    return ModelList(data=[ModelOut(id=name) for name in service.models()])
