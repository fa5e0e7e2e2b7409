"""Confidence-based iterative re-selection (VideoICL) against a configured MLLM endpoint.

Round r shows the window ``[offset + r*window, offset + (r+1)*window)`` of one ranking, computed once
on one pool version, so windows advance and never repeat. The loop stops at the first answer whose
confidence is strictly above the threshold; otherwise the most confident answer of all rounds wins.

Baselines for ablations: ``window=0`` is zero-shot (one round, no demonstrations);
``windows="repeat_first"`` shows the first window in every round, as the released VideoICL code
does; ``demo_labels`` shows perturbed labels (``perturb``), seeded by ``seed + round``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Literal

from exemplar.errors import InvalidRequest
from exemplar.retrieval.confidence import CONFIDENCE_MEASURES, confidence
from exemplar.retrieval.many_query import BatchInferOptions, BatchInferResult, infer_batch
from exemplar.retrieval.mllm import MLLMRegistry, check_generation
from exemplar.retrieval.perturb import DemoLabels, shown_labels
from exemplar.retrieval.prompting import (
    ImageSource,
    PromptTemplate,
    build_messages,
    check_shown_query,
    demo_content,
    query_content,
)
from exemplar.retrieval.serving.selection import Demonstration, Query, SelectionService
from exemplar.retrieval.serving.strategies import SelectionOptions

__all__ = ["InferOptions", "InferResult", "InferRound", "InferService"]

log = logging.getLogger(__name__)

MAX_ROUNDS = 32
Stop = Literal["confident", "max_rounds", "exhausted", "zero_shot"]
Windows = Literal["advance", "repeat_first"]


@dataclasses.dataclass(frozen=True)
class InferOptions:
    mllm: str
    window: int = 2
    max_rounds: int = 4
    threshold: float = 0.5
    confidence: str = "min_token_prob"
    max_tokens: int = 16
    temperature: float = 0.0
    template: PromptTemplate = PromptTemplate()
    windows: Windows = "advance"
    demo_labels: DemoLabels = "true"
    seed: int = 0  # of the label perturbations; round r uses seed + r

    @property
    def zero_shot(self) -> bool:
        return self.window == 0


@dataclasses.dataclass(frozen=True)
class InferRound:
    round: int
    offset: int
    demonstrations: list[Demonstration]
    shown_labels: list[str | None]  # the labels the model was shown, demonstration by demonstration
    answer: str
    confidence: float
    timing_ms: dict[str, float]


@dataclasses.dataclass(frozen=True)
class InferResult:
    pool: str
    version: int
    encoder: str
    strategy: str
    mllm: str
    answer: str
    confidence: float
    stopped: Stop
    chosen_round: int
    rounds: list[InferRound]
    timing_ms: dict[str, float]


class InferService:
    def __init__(self, selection: SelectionService, mllms: MLLMRegistry) -> None:
        self.selection = selection
        self.mllms = mllms

    def _check(self, options: InferOptions, select: SelectionOptions) -> None:
        if options.confidence not in CONFIDENCE_MEASURES:
            confidence(options.confidence, (), "")  # raises with the valid choices
        checks = [
            (0 <= options.window <= self.selection.limits.max_k, "window", f"window must be between 0 and {self.selection.limits.max_k}"),
            (1 <= options.max_rounds <= MAX_ROUNDS, "max_rounds", f"max_rounds must be between 1 and {MAX_ROUNDS}"),
            (0.0 <= options.threshold <= 1.0, "threshold", "threshold must be between 0 and 1"),
            (select.k_per_class is None, "k_per_class", "infer windows are set by 'window', not k_per_class"),
            (options.windows in ("advance", "repeat_first"), "windows", "windows must be 'advance' or 'repeat_first'"),
        ]
        for ok, param, message in checks:
            if not ok:
                raise InvalidRequest(message, param=param)
        check_generation(options.max_tokens, options.temperature)
        options.template.check()

    def infer_batch(self, pool: str, queries: Sequence[Query], strategy: str, select: SelectionOptions,
                    options: BatchInferOptions) -> BatchInferResult:
        """ManyICL: one shared demonstration set, many numbered queries per model call (``many_query``)."""
        return infer_batch(self.selection, self.mllms, pool, queries, strategy, select, options)

    def infer(self, pool: str, query: Query, strategy: str, select: SelectionOptions, options: InferOptions) -> InferResult:
        started = time.perf_counter()
        client = self.mllms.get(options.mllm)
        self._check(options, select)
        check_shown_query(query, "query")
        def options_for(r: int) -> SelectionOptions:
            # repeat_first: the released VideoICL code shows its first window again in every round.
            step = 0 if options.windows == "repeat_first" else r
            return dataclasses.replace(select, k=max(options.window, 1), offset=select.offset + step * options.window)

        # Zero-shot selects nothing but is still prepared: the query is checked as for any round.
        prepared = self.selection.prepare(pool, [query], strategy, options_for(0), param_prefix="query")
        snap = prepared.snap
        images = ImageSource(snap, client.config)
        shown_query = query_content(snap, query, images)
        label_space = select.labels if select.labels is not None else snap.labels
        rounds: list[InferRound] = []
        stopped: Stop = "max_rounds"
        for r in range(1 if options.zero_shot else options.max_rounds):
            t0 = time.perf_counter()
            demonstrations = [] if options.zero_shot else self.selection.run(prepared, options_for(r))[0].demonstrations
            t1 = time.perf_counter()
            if not demonstrations and not options.zero_shot:
                stopped = "exhausted"
                break
            shown = shown_labels([d.label for d in demonstrations], options.demo_labels, label_space=label_space,
                                 seed=options.seed + r)
            contents = [demo_content(snap, dataclasses.replace(d, label=label), images)
                        for d, label in zip(demonstrations, shown)]
            messages = build_messages(options.template, contents, shown_query, max_images=client.config.max_images)
            t2 = time.perf_counter()
            completion = client.complete(messages, max_tokens=options.max_tokens, temperature=options.temperature)
            answer = completion.text.strip()
            score = confidence(options.confidence, completion.tokens, answer)
            rounds.append(InferRound(
                round=r, offset=options_for(r).offset, demonstrations=demonstrations, shown_labels=shown,
                answer=answer, confidence=score,
                timing_ms={"select": round((t1 - t0) * 1000, 3), "prompt": round((t2 - t1) * 1000, 3),
                           "model": round(completion.latency_ms, 3)},
            ))
            if options.zero_shot:
                stopped = "zero_shot"
            elif score > options.threshold:
                stopped = "confident"
                break
        if not rounds:
            raise InvalidRequest("no demonstrations to show: the filters leave nothing past this offset", param="offset")
        best = rounds[-1] if stopped in ("confident", "zero_shot") else max(rounds, key=lambda x: x.confidence)
        total = (time.perf_counter() - started) * 1000
        model = sum(x.timing_ms["model"] for x in rounds)
        return InferResult(
            pool=snap.pool, version=snap.version, encoder=snap.encoder, strategy=prepared.strategy.name,
            mllm=options.mllm, answer=best.answer, confidence=best.confidence, stopped=stopped,
            chosen_round=best.round, rounds=rounds,
            timing_ms={"total": round(total, 3), "model": round(model, 3), "overhead": round(total - model, 3),
                       "encode": prepared.encode_ms},
        )
