"""OpenAI-compatible chat completions with demonstrations.

The query is the request's last user message (its first image, else its text); the selected
demonstrations go in just before that message as user/assistant turns; the request goes to the
configured endpoint that ``model`` names. A request without selection passes through as it came,
with the endpoint's own model name. When the endpoint's limits (images per prompt, prompt bytes)
would be passed, the lowest-ranked demonstrations are left out, never the caller's messages.

In iterative mode (VideoICL) each round shows the next window of one ranking until an answer's
confidence is above the threshold, as ``infer`` does; the chosen round's completion is returned.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import anyio.to_thread

from exemplar.errors import ExemplarError, InvalidRequest
from exemplar.retrieval.confidence import confidence
from exemplar.retrieval.mllm import EndpointConfig, parse_completion
from exemplar.retrieval.prompting import (
    ImageSource,
    PromptTemplate,
    count_images,
    demo_content,
    demonstration_turns,
)
from exemplar.retrieval.serving.selection import Demonstration, Prepared, Query, SelectionService
from exemplar.retrieval.serving.strategies import SelectionOptions, get_strategy
from exemplar.retrieval.upstream import ChatUpstream, ChatUpstreams, UpstreamStream

__all__ = ["ChatReply", "ChatReport", "ChatRound", "ChatSelection", "ChatService", "Iterative", "Trim", "query_of"]

Stop = Literal["confident", "max_rounds", "exhausted"]
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[^;,]*)*;base64,(?P<data>.*)$", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Iterative:
    window: int = 2
    max_rounds: int = 4
    threshold: float = 0.5
    confidence: str = "min_token_prob"


@dataclasses.dataclass(frozen=True)
class ChatSelection:
    """What the ``exemplar`` object of a chat request asks for."""

    pool: str
    strategy: str
    options: SelectionOptions
    template: PromptTemplate = PromptTemplate()
    query: Query | None = None  # None: the last user message
    iterative: Iterative | None = None


@dataclasses.dataclass(frozen=True)
class Trim:
    """Demonstrations selected but left out of the prompt, lowest-ranked first, and the limit that did it."""

    ids: list[str]
    reason: Literal["max_images", "max_prompt_bytes"]
    limit: int


@dataclasses.dataclass(frozen=True)
class ChatRound:
    round: int
    offset: int
    demonstrations: list[Demonstration]  # as shown, in prompt order
    trimmed: Trim | None
    answer: str
    confidence: float
    timing_ms: dict[str, float]


@dataclasses.dataclass(frozen=True)
class ChatReport:
    pool: str
    version: int
    encoder: str
    strategy: str
    demonstrations: list[Demonstration]
    trimmed: Trim | None
    timing_ms: dict[str, float]
    rounds: list[ChatRound] | None = None  # iterative mode
    stopped: Stop | None = None
    chosen_round: int | None = None


@dataclasses.dataclass(frozen=True)
class ChatReply:
    body: dict[str, Any]  # the endpoint's completion, as it answered
    report: ChatReport | None  # None: passed through without selection


@dataclasses.dataclass(frozen=True)
class _Prompt:
    """One round's request to the endpoint."""

    content: bytes
    demonstrations: list[Demonstration]
    trimmed: Trim | None
    selected: int
    select_ms: float
    prompt_ms: float


@contextmanager
def _under(prefix: str) -> Iterator[None]:
    """Selection errors name the ``exemplar`` object's fields (``exemplar.k``), as the caller sent them."""
    try:
        yield
    except ExemplarError as exc:
        if exc.param and not exc.param.startswith(("messages", prefix)):
            exc.param = f"{prefix}.{exc.param}"
        raise


def _image_bytes(url: object, param: str) -> bytes | None:
    if not isinstance(url, str):
        raise InvalidRequest("an image_url part needs a 'url' string", param=param)
    found = _DATA_URI.match(url)
    if found is None:
        return None  # a URL: Exemplar never fetches URLs from requests
    try:
        return base64.b64decode(found["data"], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("the image's data URI is not valid base64", param=param) from None


def query_of(messages: Sequence[Any], *, both: bool = False) -> tuple[int, Query]:
    """The last user message, and what to select for: its first image given as a data URI, else its text;
    ``both`` (a request that weights the modalities): its first image with its text, where it has both."""
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise InvalidRequest("selecting demonstrations needs a user message: the last one is the query", param="messages")
    at = users[-1]
    content = messages[at].get("content")
    param = f"messages[{at}].content"
    if isinstance(content, str):
        parts: list[Any] = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = content
    else:
        raise InvalidRequest("the query message has no content", param=param)
    texts, linked, image = [], False, None
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url" and image is None:
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            image = _image_bytes(url, f"{param}[{j}].image_url.url")
            if image is not None and not both:
                return at, Query(image=image)
            linked = linked or image is None
        elif kind == "text" and isinstance(part.get("text"), str) and part["text"].strip():
            texts.append(part["text"])
    if image is not None:
        return at, Query(image=image, text="\n".join(texts) if texts else None)
    if texts:
        return at, Query(text="\n".join(texts))
    if linked:
        raise InvalidRequest("the query's image is a URL, and Exemplar does not fetch URLs from requests: send it as "
                             "a data URI (data:image/png;base64,...), or give exemplar.query", param=param)
    raise InvalidRequest("the query message has neither an image nor text to select for", param=param)


def _dumps(value: Any) -> bytes:  # noqa: ANN401 - JSON
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        # Text with a lone surrogate (JSON allows "\ud800") has no UTF-8 form: sent escaped, as it came.
        return json.dumps(value, separators=(",", ":")).encode()


def _fit(base: dict[str, Any], at: int, demos: list[Demonstration], turns: list[list[dict[str, Any]]],
         config: EndpointConfig) -> tuple[bytes, list[Demonstration], Trim | None]:
    """The request with as many demonstrations as the endpoint's limits allow, dropping the
    lowest-ranked first; each demonstration's turns go in together, before message ``at``."""
    messages = base["messages"]
    keep = sorted(range(len(demos)), key=lambda i: demos[i].rank)  # best first
    trim: Trim | None = None

    def drop_to(n: int, reason: Literal["max_images", "max_prompt_bytes"], limit: int) -> None:
        nonlocal keep, trim
        if n < len(keep):
            earlier = trim.ids if trim else []
            dropped = [demos[i].id for i in reversed(keep[n:])]
            keep = keep[:n]
            trim = Trim(ids=earlier + dropped, reason=reason, limit=limit)

    own_images = count_images(messages)
    images = [count_images(t) for t in turns]
    n = 0
    while n < len(keep) and own_images + sum(images[i] for i in keep[:n + 1]) <= config.max_images:
        n += 1
    drop_to(n, "max_images", config.max_images)
    # Each message inserted into a non-empty list adds its JSON and one comma.
    sizes = [sum(len(_dumps(m)) + 1 for m in t) for t in turns]
    size = len(_dumps(base))
    n = 0
    while n < len(keep) and size + sum(sizes[i] for i in keep[:n + 1]) <= config.max_prompt_bytes:
        n += 1
    drop_to(n, "max_prompt_bytes", config.max_prompt_bytes)
    while True:
        shown = sorted(keep)  # prompt order: the order the selection asked for
        inserted = [m for i in shown for m in turns[i]]
        content = _dumps({**base, "messages": [*messages[:at], *inserted, *messages[at:]]})
        # The sizes above are exact unless the caller's text had to be escaped (see _dumps).
        if len(content) <= config.max_prompt_bytes or not keep:
            return content, [demos[i] for i in shown], trim
        drop_to(len(keep) - 1, "max_prompt_bytes", config.max_prompt_bytes)


class ChatService:
    def __init__(self, selection: SelectionService, upstreams: ChatUpstreams) -> None:
        self.selection = selection
        self.upstreams = upstreams

    def models(self) -> list[str]:
        return self.upstreams.names()

    async def complete(self, body: dict[str, Any], how: ChatSelection | None) -> ChatReply:
        """``body`` is the caller's request less the ``exemplar`` object."""
        upstream = self.upstreams.get(str(body.get("model", "")))
        if how is None:
            answer = await upstream.complete(_dumps(upstream.payload(body)))
            return ChatReply(answer.body, None)
        if how.iterative is not None:
            return await self._iterate(upstream, body, how, how.iterative)
        started = time.perf_counter()
        at, prepared = await anyio.to_thread.run_sync(self._prepare, body, how)
        prompt = await anyio.to_thread.run_sync(self._prompt, upstream, body, how, at, prepared, how.options)
        answer = await upstream.complete(prompt.content)
        return ChatReply(answer.body, self._report(prepared, prompt, started, answer.latency_ms))

    async def stream(self, body: dict[str, Any], how: ChatSelection | None) -> tuple[UpstreamStream, ChatReport | None]:
        """The endpoint's event stream, opened (errors before the first byte raise here)."""
        upstream = self.upstreams.get(str(body.get("model", "")))
        if how is None:
            return await upstream.stream(_dumps(upstream.payload(body))), None
        if how.iterative is not None:
            raise InvalidRequest("iterative selection needs each round's whole answer to judge its confidence: "
                                 "use stream false with exemplar.iterative", param="stream")
        started = time.perf_counter()
        at, prepared = await anyio.to_thread.run_sync(self._prepare, body, how)
        prompt = await anyio.to_thread.run_sync(self._prompt, upstream, body, how, at, prepared, how.options)
        opened = time.perf_counter()
        stream = await upstream.stream(prompt.content)
        return stream, self._report(prepared, prompt, started, (time.perf_counter() - opened) * 1000)

    async def aclose(self) -> None:
        await self.upstreams.aclose()

    def _prepare(self, body: dict[str, Any], how: ChatSelection) -> tuple[int, Prepared]:
        messages = body.get("messages") or []
        try:
            at, query = query_of(messages, both=how.options.fusion is not None)
        except InvalidRequest:
            with _under("exemplar"):
                needs_query = get_strategy(how.strategy).needs_query
            if how.query is None and needs_query:
                raise
            # Nothing to rank by is needed (random), or exemplar.query gives it: the demonstrations
            # go before the last user message, or last.
            users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
            at, query = (users[-1] if users else len(messages)), Query()
        prefix = "exemplar.query" if how.query is not None else f"messages[{at}].content"
        with _under("exemplar"):
            prepared = self.selection.prepare(how.pool, [how.query or query], how.strategy, how.options,
                                              param_prefix=prefix)
        return at, prepared

    def _prompt(self, upstream: ChatUpstream, body: dict[str, Any], how: ChatSelection, at: int, prepared: Prepared,
                options: SelectionOptions, *, logprobs: bool = False) -> _Prompt:
        t0 = time.perf_counter()
        with _under("exemplar"):
            result = self.selection.run(prepared, options)[0]
        t1 = time.perf_counter()
        images = ImageSource(prepared.snap, upstream.config)
        turns = [demonstration_turns(how.template, demo_content(prepared.snap, d, images)) for d in result.demonstrations]
        base = upstream.payload(body)
        if how.template.system:
            base["messages"] = [{"role": "system", "content": how.template.system}, *base["messages"]]
            at += 1
        if logprobs:  # confidence is read from them
            asked = base.get("top_logprobs")
            base["logprobs"] = True
            base["top_logprobs"] = max(asked if isinstance(asked, int) else 0, upstream.config.top_logprobs)
        content, shown, trim = _fit(base, at, result.demonstrations, turns, upstream.config)
        return _Prompt(content, shown, trim, len(result.demonstrations),
                       round((t1 - t0) * 1000, 3), round((time.perf_counter() - t1) * 1000, 3))

    @staticmethod
    def _report(prepared: Prepared, prompt: _Prompt, started: float, upstream_ms: float, **more: Any) -> ChatReport:
        total = (time.perf_counter() - started) * 1000
        timing = {"encode": prepared.encode_ms, "select": prompt.select_ms, "prompt": prompt.prompt_ms,
                  "upstream": round(upstream_ms, 3), "total": round(total, 3),
                  "overhead": round(total - upstream_ms, 3)}
        return ChatReport(pool=prepared.snap.pool, version=prepared.snap.version, encoder=prepared.snap.encoder,
                          strategy=prepared.strategy.name, demonstrations=prompt.demonstrations, trimmed=prompt.trimmed,
                          timing_ms=timing, **more)

    async def _iterate(self, upstream: ChatUpstream, body: dict[str, Any], how: ChatSelection,
                       loop: Iterative) -> ChatReply:
        started = time.perf_counter()

        def options_for(r: int) -> SelectionOptions:
            return dataclasses.replace(how.options, k=loop.window, k_per_class=None,
                                       offset=how.options.offset + r * loop.window)

        how = dataclasses.replace(how, options=options_for(0))
        at, prepared = await anyio.to_thread.run_sync(self._prepare, body, how)
        rounds: list[tuple[ChatRound, dict[str, Any], _Prompt]] = []
        stopped: Stop = "max_rounds"
        for r in range(loop.max_rounds):
            prompt = await anyio.to_thread.run_sync(
                lambda r=r: self._prompt(upstream, body, how, at, prepared, options_for(r), logprobs=True))
            if not prompt.selected:
                stopped = "exhausted"
                break
            answer = await upstream.complete(prompt.content)
            text, tokens, _ = parse_completion(answer.body)
            score = confidence(loop.confidence, tokens, text.strip())
            rounds.append((ChatRound(
                round=r, offset=options_for(r).offset, demonstrations=prompt.demonstrations, trimmed=prompt.trimmed,
                answer=text.strip(), confidence=score,
                timing_ms={"select": prompt.select_ms, "prompt": prompt.prompt_ms, "upstream": round(answer.latency_ms, 3)},
            ), answer.body, prompt))
            if score > loop.threshold:
                stopped = "confident"
                break
        if not rounds:
            raise InvalidRequest("no demonstrations to show: the filters leave nothing past this offset",
                                 param="exemplar.offset")
        chosen, completion, prompt = rounds[-1] if stopped == "confident" else max(rounds, key=lambda x: x[0].confidence)
        if not body.get("logprobs"):
            completion = _without_logprobs(completion)  # asked for here, not by the caller
        upstream_ms = sum(x[0].timing_ms["upstream"] for x in rounds)
        report = self._report(prepared, prompt, started, upstream_ms, rounds=[x[0] for x in rounds], stopped=stopped,
                              chosen_round=chosen.round)
        return ChatReply(completion, report)


def _without_logprobs(completion: dict[str, Any]) -> dict[str, Any]:
    choices = completion.get("choices")
    if not isinstance(choices, list):
        return completion
    return {**completion, "choices": [{**c, "logprobs": None} if isinstance(c, dict) else c for c in choices]}
