"""ManyICL's many-query prompt: one demonstration set shown once, then up to ``queries_per_call``
numbered queries in one user turn, answered one line per query (``<n>: <answer>``).

The set is the batch's shared one (``select_batch``'s ``fixed`` or ``mean``), so every call of a
batch shows the same demonstrations. A batch longer than ``queries_per_call`` is split into several
calls, in order. Each query gets its answer or its own failure: a line that is missing, empty,
unparseable or given twice with different answers fails that query only; a call the endpoint fails
fails its queries only, unless every call fails (then the request fails as ``infer`` does).

Baselines, per call so that every model call can be asked again: ``demo_labels`` shows perturbed
labels (``perturb``) seeded by ``seed + call`` (as ``infer`` seeds round r by ``seed + r``);
``reshuffle`` shows the fixed set in a fresh seeded order in each call (ManyICL reshuffles per batch),
the seed reported with the call (``shuffle_seed`` asks for that order again).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from typing import Any

from exemplar.errors import Incompatible, InvalidRequest, UpstreamError
from exemplar.retrieval.mllm import MLLMRegistry, check_generation
from exemplar.retrieval.perturb import DemoLabels, Noise, shown_labels
from exemplar.retrieval.prompting import (
    DemoContent,
    ImageSource,
    PromptTemplate,
    check_shown_query,
    count_images,
    demo_content,
    demonstration_turns,
    query_content,
    render,
)
from exemplar.retrieval.serving.manyicl import SharedMode, check_fixed, check_shuffle, draw_shuffle_seed
from exemplar.retrieval.serving.selection import Demonstration, Query, SelectionService
from exemplar.retrieval.serving.strategies import SelectionOptions
from exemplar.retrieval.serving.strategies.ordering import shuffled

__all__ = ["MAX_QUERIES_PER_CALL", "BatchInferOptions", "BatchInferResult", "ModelCall", "QueryAnswer",
           "QueryFailure", "batch_user_turn", "infer_batch", "parse_answers"]

MAX_QUERIES_PER_CALL = 64
FORMAT = ("Answer each of the {n} numbered queries above on its own line, as '<number>: <answer>' "
          "(for example '1: ...'), in order, and nothing else.")
# "3: circle", "3. circle", "3) circle", "Query 3: circle"; the number starts the line.
_ANSWER = re.compile(r"^\s*(?:query\s*)?(\d+)\s*[:.)]\s*(.*?)\s*$", re.IGNORECASE)
_NUMBERED = re.compile(r"^\s*(?:query\s*)?(\d+)(?!\d)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class BatchInferOptions:
    mllm: str
    shared: SharedMode = "fixed"
    queries_per_call: int = 8
    max_tokens: int = 256
    temperature: float = 0.0
    template: PromptTemplate = PromptTemplate()
    shuffle_seed: int | None = None
    reshuffle: bool = False  # the fixed set in a fresh seeded order per call
    demo_labels: DemoLabels = "true"
    seed: int = 0  # of the label perturbations; call c uses seed + c


@dataclasses.dataclass(frozen=True)
class QueryFailure:
    type: str  # missing | empty | unparseable | ambiguous, or the endpoint error's type
    message: str


@dataclasses.dataclass(frozen=True)
class QueryAnswer:
    index: int  # in the request's queries
    call: int
    answer: str | None
    error: QueryFailure | None


@dataclasses.dataclass(frozen=True)
class ModelCall:
    call: int
    queries: list[int]
    text: str | None  # the model's whole answer; None when the endpoint failed the call
    error: QueryFailure | None
    timing_ms: dict[str, float]
    # What this call showed: the set in its order, the labels the model saw, the order's seed.
    demonstrations: list[Demonstration] = dataclasses.field(default_factory=list)
    shown_labels: list[str | None] = dataclasses.field(default_factory=list)
    shuffle_seed: int | None = None


@dataclasses.dataclass(frozen=True)
class BatchInferResult:
    pool: str
    version: int
    encoder: str
    strategy: str
    mllm: str
    shared: SharedMode
    demonstrations: list[Demonstration]
    shortfall: dict[str, int]
    answers: list[QueryAnswer]
    calls: list[ModelCall]
    timing_ms: dict[str, float]


def batch_user_turn(template: PromptTemplate, queries: Sequence[DemoContent]) -> dict[str, Any]:
    """The queries of one call, numbered from 1, each with its image, and the answer format last."""
    content: list[dict[str, Any]] = []
    for n, query in enumerate(queries, 1):
        text = render(template.query_text, query.fields)
        content.append({"type": "text", "text": f"Query {n}: {text}".rstrip()})
        url = query.image_url() if template.include_images else None
        if url:
            content.append({"type": "image_url", "image_url": {"url": url}})
    instruction = f"{template.instruction}\n" if template.instruction else ""
    content.append({"type": "text", "text": instruction + FORMAT.format(n=len(queries))})
    return {"role": "user", "content": content}


def parse_answers(text: str, n: int) -> list[tuple[str | None, QueryFailure | None]]:
    """Queries ``1..n``' answers in ``text``, one line each; a query without a usable line fails alone.
    Lines for numbers outside ``1..n`` and lines without a number are ignored."""
    found: dict[int, list[str]] = {}
    malformed: set[int] = set()
    for line in text.splitlines():
        match = _ANSWER.match(line)
        if match:
            found.setdefault(int(match[1]), []).append(match[2])
            continue
        numbered = _NUMBERED.match(line)
        if numbered:
            malformed.add(int(numbered[1]))
    out: list[tuple[str | None, QueryFailure | None]] = []
    for number in range(1, n + 1):
        answers = found.get(number)
        if not answers:
            kind = "unparseable" if number in malformed else "missing"
            why = "its line is not '<number>: <answer>'" if kind == "unparseable" else "no line answers it"
            out.append((None, QueryFailure(kind, f"query {number} of the call: {why}")))
        elif len(set(answers)) > 1:
            out.append((None, QueryFailure("ambiguous", f"query {number} of the call is answered twice, differently")))
        elif not answers[0]:
            out.append((None, QueryFailure("empty", f"query {number} of the call has an empty answer")))
        else:
            out.append((answers[0], None))
    return out


def _check(selection: SelectionService, queries: Sequence[Query], strategy: str, select: SelectionOptions,
           options: BatchInferOptions) -> None:
    if options.shared not in ("fixed", "mean"):
        raise InvalidRequest("shared is 'fixed' or 'mean'", param="shared")
    if options.shared == "fixed":
        check_fixed(strategy, select)
    checks = [
        (1 <= options.queries_per_call <= MAX_QUERIES_PER_CALL, "queries_per_call",
         f"queries_per_call must be between 1 and {MAX_QUERIES_PER_CALL}"),
        (options.demo_labels in ("true", "shuffled", "random") or isinstance(options.demo_labels, Noise),
         "demo_labels", "demo_labels is 'true', 'shuffled', 'random' or a label noise"),
    ]
    for ok, param, message in checks:
        if not ok:
            raise InvalidRequest(message, param=param)
    check_shuffle(options.shared, options.shuffle_seed, options.reshuffle)
    check_generation(options.max_tokens, options.temperature)
    options.template.check()
    if not queries:
        raise InvalidRequest("no queries given", param="queries")
    for i, query in enumerate(queries):
        check_shown_query(query, f"queries[{i}]")


def infer_batch(selection: SelectionService, mllms: MLLMRegistry, pool: str, queries: Sequence[Query],
                strategy: str, select: SelectionOptions, options: BatchInferOptions) -> BatchInferResult:
    started = time.perf_counter()
    client = mllms.get(options.mllm)
    _check(selection, queries, strategy, select, options)
    prepared = selection.prepare(pool, queries, strategy, select)
    t0 = time.perf_counter()
    if options.shared == "fixed":
        chosen = selection.run_fixed(prepared, select, options.shuffle_seed)[0]
    else:
        chosen = selection.run(prepared.shared(), select)[0]
    select_ms = (time.perf_counter() - t0) * 1000
    snap = prepared.snap
    images = ImageSource(snap, client.config)
    template = options.template
    system: list[dict[str, Any]] = [{"role": "system", "content": template.system}] if template.system else []
    label_space = select.labels if select.labels is not None else snap.labels
    demos = chosen.demonstrations
    # reshuffle permutes the set from the round robin's order, as run_fixed's shuffle_seed does, so
    # that a call's reported seed sent back as shuffle_seed shows that call's order again.
    ranked = sorted(demos, key=lambda d: d.rank)
    # A demonstration's turns (its image read once) for each label it is shown with.
    turns: dict[tuple[str, str | None], list[dict[str, Any]]] = {}

    def shown_in(call: int) -> tuple[list[Demonstration], list[str | None], int | None, list[dict[str, Any]]]:
        if options.reshuffle:
            seed: int | None = draw_shuffle_seed()
            order = shuffled(ranked, seed)
        else:
            seed, order = options.shuffle_seed, demos
        labels = shown_labels([d.label for d in order], options.demo_labels, label_space=label_space,
                              seed=options.seed + call)
        head = list(system)
        for d, label in zip(order, labels):
            key = (d.id, label)
            if key not in turns:
                turns[key] = demonstration_turns(template, demo_content(snap, dataclasses.replace(d, label=label),
                                                                        images))
            head.extend(turns[key])
        return order, labels, seed, head

    answers: list[QueryAnswer] = []
    calls: list[ModelCall] = []
    size = options.queries_per_call
    first_error: UpstreamError | None = None
    # Bounded: ceil(len(queries) / queries_per_call) calls, len(queries) <= max_queries.
    for call, start in enumerate(range(0, len(queries), size)):
        indices = list(range(start, min(start + size, len(queries))))
        t1 = time.perf_counter()
        order, labels, shuffle_seed, head = shown_in(call)
        if count_images(head) > client.config.max_images:  # the same in every call: raised before the first
            raise Incompatible(f"the demonstrations alone hold more than {client.config.max_images} images; lower k "
                               "or set include_images false", param="k")
        turn = batch_user_turn(template, [query_content(snap, queries[i], images) for i in indices])
        messages = [*head, turn]
        if count_images(messages) > client.config.max_images:
            raise Incompatible(f"a call would show more than {client.config.max_images} images; lower "
                               "queries_per_call or k", param="queries_per_call")
        t2 = time.perf_counter()
        try:
            completion = client.complete(messages, max_tokens=options.max_tokens, temperature=options.temperature)
        except Incompatible as exc:
            exc.param = "queries_per_call"  # the prompt is over the endpoint's size: fewer queries per call
            raise
        except UpstreamError as exc:
            first_error = first_error or exc
            failure = QueryFailure(exc.type, exc.message)
            calls.append(ModelCall(call, indices, None, failure, {
                "prompt": round((t2 - t1) * 1000, 3), "model": round((time.perf_counter() - t2) * 1000, 3)},
                order, labels, shuffle_seed))
            answers.extend(QueryAnswer(i, call, None, failure) for i in indices)
            continue
        parsed = parse_answers(completion.text, len(indices))
        calls.append(ModelCall(call, indices, completion.text, None, {
            "prompt": round((t2 - t1) * 1000, 3), "model": round(completion.latency_ms, 3)},
            order, labels, shuffle_seed))
        answers.extend(QueryAnswer(i, call, answer, failure) for i, (answer, failure) in zip(indices, parsed))
    if first_error is not None and all(c.error is not None for c in calls):
        raise first_error
    total = (time.perf_counter() - started) * 1000
    model = sum(c.timing_ms["model"] for c in calls)
    return BatchInferResult(
        pool=snap.pool, version=snap.version, encoder=snap.encoder, strategy=prepared.strategy.name,
        mllm=options.mllm, shared=options.shared, demonstrations=chosen.demonstrations, shortfall=chosen.shortfall,
        answers=answers, calls=calls,
        timing_ms={"total": round(total, 3), "model": round(model, 3), "overhead": round(total - model, 3),
                   "encode": prepared.encode_ms, "select": round(select_ms, 3)},
    )
