from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter

from exemplar.app.errors import ErrorEnvelope
from exemplar.app.schemas.infer import (
    BatchInferRequest,
    BatchInferResponse,
    DemoLabelsIn,
    InferDemonstrationOut,
    InferRequest,
    InferResponse,
    InferRoundOut,
    LabelNoiseIn,
    ModelCallOut,
    QueryAnswerOut,
    QueryFailureOut,
)
from exemplar.app.routes.select import demonstration_out
from exemplar.app.schemas.select import vector_errors
from exemplar.app.observability import Observability
from exemplar.app.services import QUERY, InferDep, ObsDep
from exemplar.retrieval import Demonstration
from exemplar.retrieval.infer import InferOptions, InferRound
from exemplar.retrieval.many_query import BatchInferOptions, QueryFailure
from exemplar.retrieval.perturb import DemoLabels, Noise
from exemplar.retrieval.prompting import PromptTemplate

router = APIRouter(prefix="/v1/pools", tags=["infer"], responses={
    400: {"model": ErrorEnvelope},
    404: {"model": ErrorEnvelope, "description": "No such pool or query item, or 'mllm' names no configured model "
          "endpoint (the error lists the configured ones)"},
    409: {"model": ErrorEnvelope, "description": "The request does not fit the pool as it is (empty, no adapter, a "
          "query its encoder cannot embed) or the endpoint's limits"},
    502: {"model": ErrorEnvelope}, 504: {"model": ErrorEnvelope},
})


def _observe(obs: Observability, pool: str, strategy: str, encode_ms: float, select_ms: float,
             shown: Sequence[Demonstration]) -> None:
    """The selection in the dashboard's statistics, as select's and chat's are: its own time, not the
    model's, which would swamp the selection latencies; the labels of the demonstrations the answer
    came from (infer: the chosen round's; infer/batch: the shared set)."""
    obs.observe_selection(pool, strategy, {"total": encode_ms + select_ms, "encode": encode_ms, "search": select_ms},
                          (d.label for d in shown))


@router.post("/{pool}/infer", summary="Confidence-based iterative re-selection (VideoICL) against a configured MLLM",
             dependencies=[QUERY])
def infer(pool: str, body: InferRequest, service: InferDep, obs: ObsDep) -> InferResponse:
    select = body.selection_options(k=body.window)
    options = InferOptions(
        mllm=body.mllm, window=body.window, max_rounds=body.max_rounds, threshold=body.threshold,
        confidence=body.confidence, max_tokens=body.max_tokens, temperature=body.temperature,
        template=PromptTemplate(**body.prompt.model_dump()), windows=body.windows, seed=body.seed,
        demo_labels=_demo_labels(body.demo_labels),
    )
    with vector_errors([body.query]):
        result = service.infer(pool, body.query.to_query(), body.strategy, select, options)
    if not options.zero_shot:  # a zero-shot call selects nothing
        chosen = next((r for r in result.rounds if r.round == result.chosen_round), None)
        _observe(obs, result.pool, result.strategy, result.timing_ms["encode"],
                 sum(r.timing_ms["select"] for r in result.rounds), chosen.demonstrations if chosen else [])
    return InferResponse(
        pool=result.pool, version=result.version, encoder=result.encoder, strategy=result.strategy, mllm=result.mllm,
        answer=result.answer, confidence=result.confidence, stopped=result.stopped, chosen_round=result.chosen_round,
        timing_ms=result.timing_ms, zero_shot=options.zero_shot, rounds=[_round_out(r) for r in result.rounds],
    )


@router.post("/{pool}/infer/batch", summary="Many queries per model call against one shared demonstration set "
             "(ManyICL)", dependencies=[QUERY])
def infer_batch(pool: str, body: BatchInferRequest, service: InferDep, obs: ObsDep) -> BatchInferResponse:
    options = BatchInferOptions(
        mllm=body.mllm, shared=body.shared, queries_per_call=body.queries_per_call, max_tokens=body.max_tokens,
        temperature=body.temperature, template=PromptTemplate(**body.prompt.model_dump()),
        shuffle_seed=body.shuffle_seed, reshuffle=body.reshuffle, demo_labels=_demo_labels(body.demo_labels),
        seed=body.seed,
    )
    with vector_errors(body.queries):
        result = service.infer_batch(pool, [q.to_query() for q in body.queries], body.strategy,
                                     body.selection_options(k=body.k, k_per_class=body.k_per_class), options)
    _observe(obs, result.pool, result.strategy, result.timing_ms["encode"], result.timing_ms["select"],
             result.demonstrations)
    failed = sum(a.error is not None for a in result.answers)
    return BatchInferResponse(
        pool=result.pool, version=result.version, encoder=result.encoder, strategy=result.strategy,
        mllm=result.mllm, shared=result.shared, shuffle_seed=body.shuffle_seed,
        demonstrations=[demonstration_out(d) for d in result.demonstrations],
        shortfall=result.shortfall,
        results=[QueryAnswerOut(index=a.index, call=a.call, answer=a.answer, error=_failure_out(a.error))
                 for a in result.answers],
        calls=[ModelCallOut(call=c.call, queries=c.queries, text=c.text, error=_failure_out(c.error),
                            timing_ms=c.timing_ms, shuffle_seed=c.shuffle_seed,
                            demonstrations=_shown(c.demonstrations, c.shown_labels)) for c in result.calls],
        answered=len(result.answers) - failed, failed=failed, timing_ms=result.timing_ms,
    )


def _demo_labels(value: DemoLabelsIn) -> DemoLabels:
    return Noise(value.noise) if isinstance(value, LabelNoiseIn) else value


def _shown(demonstrations: list[Demonstration], labels: list[str | None]) -> list[InferDemonstrationOut]:
    # Built from the core's own typed values, as select's demonstrations are.
    return [InferDemonstrationOut.model_construct(**vars(d), shown_label=label)
            for d, label in zip(demonstrations, labels, strict=True)]


def _failure_out(failure: QueryFailure | None) -> QueryFailureOut | None:
    return None if failure is None else QueryFailureOut(type=failure.type, message=failure.message)


def _round_out(r: InferRound) -> InferRoundOut:
    return InferRoundOut(
        round=r.round, offset=r.offset, answer=r.answer, confidence=r.confidence, timing_ms=r.timing_ms,
        demonstrations=_shown(r.demonstrations, r.shown_labels),
    )
