from __future__ import annotations

from fastapi import APIRouter

from exemplar.app.errors import ErrorEnvelope
from exemplar.app.schemas.infer import InferDemonstrationOut, InferRequest, InferResponse, InferRoundOut, LabelNoiseIn
from exemplar.app.schemas.select import vector_errors
from exemplar.app.services import QUERY, InferDep
from exemplar.retrieval.infer import InferOptions, InferRound
from exemplar.retrieval.perturb import Noise
from exemplar.retrieval.prompting import PromptTemplate

router = APIRouter(prefix="/v1/pools", tags=["infer"], responses={
    400: {"model": ErrorEnvelope},
    404: {"model": ErrorEnvelope, "description": "No such pool or query item, or 'mllm' names no configured model "
          "endpoint (the error lists the configured ones)"},
    409: {"model": ErrorEnvelope, "description": "The request does not fit the pool as it is (empty, no adapter, a "
          "query its encoder cannot embed) or the endpoint's limits"},
    502: {"model": ErrorEnvelope}, 504: {"model": ErrorEnvelope},
})


@router.post("/{pool}/infer", summary="Confidence-based iterative re-selection (VideoICL) against a configured MLLM",
             dependencies=[QUERY])
def infer(pool: str, body: InferRequest, service: InferDep) -> InferResponse:
    select = body.selection_options(k=body.window)
    options = InferOptions(
        mllm=body.mllm, window=body.window, max_rounds=body.max_rounds, threshold=body.threshold,
        confidence=body.confidence, max_tokens=body.max_tokens, temperature=body.temperature,
        template=PromptTemplate(**body.prompt.model_dump()), windows=body.windows, seed=body.seed,
        demo_labels=Noise(body.demo_labels.noise) if isinstance(body.demo_labels, LabelNoiseIn) else body.demo_labels,
    )
    with vector_errors([body.query]):
        result = service.infer(pool, body.query.to_query(), body.strategy, select, options)
    return InferResponse(
        pool=result.pool, version=result.version, encoder=result.encoder, strategy=result.strategy, mllm=result.mllm,
        answer=result.answer, confidence=result.confidence, stopped=result.stopped, chosen_round=result.chosen_round,
        timing_ms=result.timing_ms, zero_shot=options.zero_shot, rounds=[_round_out(r) for r in result.rounds],
    )


def _round_out(r: InferRound) -> InferRoundOut:
    return InferRoundOut(
        round=r.round, offset=r.offset, answer=r.answer, confidence=r.confidence, timing_ms=r.timing_ms,
        # Built from the core's own typed values, as select's demonstrations are.
        demonstrations=[InferDemonstrationOut.model_construct(**vars(d), shown_label=label)
                        for d, label in zip(r.demonstrations, r.shown_labels)],
    )
