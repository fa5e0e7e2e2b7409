"""Evaluation by the downstream model: answer accuracy under leave-one-domain-out.

The folds, queries and picks are ``evaluation.lodo_folds``'s, so the retrieval proxies reported
beside the accuracy are measured on exactly the queries the model answers. Each arm prompts the
model once per query, as ``infer`` does (one user turn per demonstration with its image and text,
an assistant turn with its label, the query last) and scores an exact match of the normalised
answer with the query's label:

- one arm per strategy, with the true labels;
- ``zero-shot``: the query alone;
- ``<strategy>+<mode>`` per label perturbation (``perturb``: ``shuffled`` by default) of one
  strategy's demonstrations, seeded by ``seed`` + the query's position.
- ``<strategy>+<order>`` per other layout of the same strategy's demonstrations (``order_arms``,
  none by default; every other arm shows them most similar first, as ``infer`` does by default):
  ``most_similar_last`` is RICES's layout, the nearest demonstration next to the query.

A call that fails (the endpoint down, a refusal, an unusable answer) counts as a wrong answer, so
arms stay paired over the same queries, and is counted in the arm's ``failures``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from exemplar.errors import ExemplarError, InvalidRequest, choices
from exemplar.retrieval.adapt.adapters import AdapterTrainer
from exemplar.retrieval.adapt.evaluation import (
    DEFAULT_EVAL_STRATEGIES, EvalReport, Interval, bootstrap, lodo_folds, summarise_folds,
)
from exemplar.retrieval.confidence import normalise_answer
from exemplar.retrieval.mllm import MLLMClient
from exemplar.retrieval.perturb import DemoLabels, describe, shown_labels
from exemplar.retrieval.prompting import DemoContent, ImageSource, PromptTemplate, build_messages, query_content
from exemplar.retrieval.serving.selection import Query
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies import Pick
from exemplar.retrieval.serving.strategies.base import ORDERS, Order
from exemplar.retrieval.serving.strategies.ordering import arrange

__all__ = ["ZERO_SHOT", "ArmResult", "ModelEvalReport", "evaluate_with_model"]

FIRST: Order = "most_similar_first"

ZERO_SHOT = "zero-shot"
MAX_CONCURRENCY = 16
_KEPT_ERRORS = 3


@dataclasses.dataclass(frozen=True)
class ArmResult:
    accuracy: Interval
    failures: int  # calls that failed, scored as wrong answers
    errors: list[str]  # the first few distinct failure messages


@dataclasses.dataclass(frozen=True)
class ModelEvalReport:
    mllm: str
    model: str
    pool: str
    version: int
    k: int
    queries: int
    arms: dict[str, ArmResult]
    differences: dict[str, Interval]  # "a - b" -> paired interval of the accuracy difference
    proxies: EvalReport  # today's retrieval proxies, on the same queries
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class _Call:
    arm: int
    query: int  # position over all folds' queries
    row: int
    picks: list[Pick]
    labels: DemoLabels
    order: Order = "most_similar_first"


def _demo(snap: Snapshot, row: int, label: str | None, images: ImageSource) -> DemoContent:
    fields = {"text": snap.texts[row], "label": label, "domain": snap.domain_of(row), "id": snap.ids[row]}
    return DemoContent(fields, lambda: images.url(row))


def evaluate_with_model(
    snap: Snapshot,
    client: MLLMClient,
    *,
    strategies: Sequence[str] = DEFAULT_EVAL_STRATEGIES,
    label_arms: Sequence[DemoLabels] = ("shuffled",),
    label_arm_strategy: str | None = None,
    order_arms: Sequence[str] = (),
    k: int = 8,
    trainer: AdapterTrainer | None = None,
    adapter_params: dict[str, Any] | None = None,
    max_queries_per_domain: int = 50,
    resamples: int = 2000,
    seed: int = 0,
    template: PromptTemplate = PromptTemplate(),
    max_tokens: int = 16,
    temperature: float = 0.0,
    concurrency: int = 4,
) -> ModelEvalReport:
    started = time.monotonic()
    strategies = list(strategies)
    if not strategies:
        raise InvalidRequest("name at least one strategy", param="strategies")
    base = label_arm_strategy or strategies[0]
    unknown = [o for o in order_arms if o not in ORDERS or o == FIRST]
    if unknown:
        others = [o for o in ORDERS if o != FIRST]
        raise InvalidRequest(f"unknown order arm {unknown[0]!r}; valid: {choices(others)} (the other arms are "
                             f"{FIRST})", param="order_arms")
    if (label_arms or order_arms) and base not in strategies:
        raise InvalidRequest(f"the label and order arms' strategy {base!r} is not among the evaluated strategies",
                             param="label_arm_strategy")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidRequest(f"concurrency must be between 1 and {MAX_CONCURRENCY}", param="concurrency")
    if k < 1:
        raise InvalidRequest("k must be at least 1 (the zero-shot arm is always there)", param="k")
    template.check()
    rng = np.random.default_rng(seed)
    folds = lodo_folds(snap, strategies, k=k, trainer=trainer, adapter_params=adapter_params,
                       max_queries_per_domain=max_queries_per_domain, seed=seed, rng=rng)
    proxies = summarise_folds(snap, folds, strategies, k=k, resamples=resamples, rng=rng,
                              adapter_params=adapter_params, started=started)

    arms: list[tuple[str, str | None, DemoLabels, Order]] = [(spec, spec, "true", FIRST) for spec in strategies]
    arms.append((ZERO_SHOT, None, "true", FIRST))
    arms += [(f"{base}+{describe(mode)}", base, mode, FIRST) for mode in label_arms]
    arms += [(f"{base}+{order}", base, "true", order) for order in dict.fromkeys(order_arms)]  # type: ignore[misc]
    queries = [(row, {spec: fold.picks[spec][i] for spec in strategies})
               for fold in folds for i, row in enumerate(fold.rows)]
    calls = [_Call(a, q, int(row), picks[spec] if spec is not None else [], mode, order)
             for a, (_, spec, mode, order) in enumerate(arms) for q, (row, picks) in enumerate(queries)]

    images = ImageSource(snap, client.config)
    label_space = snap.labels

    def ask(call: _Call) -> tuple[bool, str | None]:
        try:
            # As infer shows them (most similar first by default), or in the arm's order.
            # A shuffle arm draws a layout per query (its seed and the query's position): one seed
            # for all would show every query the same permutation.
            picks = arrange(call.picks, call.order, snap, seed + call.query)
            labels = shown_labels([snap.label_of(p.row) for p in picks], call.labels, label_space=label_space,
                                  seed=seed + call.query)
            demos = [_demo(snap, p.row, label, images) for p, label in zip(picks, labels)]
            query = query_content(snap, Query(item_id=snap.ids[call.row]), images)
            messages = build_messages(template, demos, query, max_images=client.config.max_images)
            completion = client.complete(messages, max_tokens=max_tokens, temperature=temperature)
        except ExemplarError as exc:
            return False, f"{exc.type}: {exc.message}"
        truth = snap.label_of(call.row)
        return truth is not None and normalise_answer(completion.text) == normalise_answer(truth), None

    correct = np.zeros((len(arms), len(queries)))
    failures = [0] * len(arms)
    errors: list[list[str]] = [[] for _ in arms]
    # A few calls at a time: a real endpoint is shared, and a rate limit would only turn into failures.
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval-mllm") as pool:
        for call, (ok, error) in zip(calls, pool.map(ask, calls)):
            correct[call.arm, call.query] = float(ok)
            if error is not None:
                failures[call.arm] += 1
                if error not in errors[call.arm] and len(errors[call.arm]) < _KEPT_ERRORS:
                    errors[call.arm].append(error)

    n = len(queries)
    shared = rng.integers(0, n, size=(resamples, n))  # the same resamples for every arm: paired differences
    names = [name for name, _, _, _ in arms]
    results = {name: ArmResult(bootstrap(correct[a], rng, resamples, shared), failures[a], errors[a])
               for a, name in enumerate(names)}
    pairs = [(spec, ZERO_SHOT) for spec in strategies]
    pairs += [(name, base) if order != FIRST else (base, name) for name, _, _, order in arms[len(strategies) + 1:]]
    pairs += [(a, b) for a, b in (("invariant:topk", "topk"), ("invariant:balanced", "balanced"), ("topk", "random"))
              if a in strategies and b in strategies]
    differences = {f"{a} - {b}": bootstrap(correct[names.index(a)] - correct[names.index(b)], rng, resamples, shared)
                   for a, b in pairs}
    return ModelEvalReport(
        mllm=client.name, model=client.config.model, pool=snap.pool, version=snap.version, k=k, queries=n,
        arms=results, differences=differences, proxies=proxies, seconds=round(time.monotonic() - started, 3),
    )
