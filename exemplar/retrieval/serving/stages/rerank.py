"""``rerank``: a model endpoint judges the strategy's first candidates for relevance to the query, and
the candidates are re-ordered by its judgement (RagLLaVA: Chen et al., 2024, "MLLM Is a Strong
Reranker").

Each of the first ``retrieve_k`` candidates is shown to the judge with the query, in one user turn:
``Query: <text>`` and the query's image, ``Candidate: <text>`` and the candidate's image, then the
``question`` ("Is this example relevant to the query? Answer Yes or No."). The judge answers one
token; its score is P("Yes"): the summed probability of the first token's ``top_logprobs`` entries
that read "yes" once stripped of spaces and punctuation and lower-cased ("Yes", " yes", "YES."), 0
when none does. The candidates are kept best score first (ties in the strategy's order), those under
``min_score`` dropped, at most ``top_n``; candidates past ``retrieve_k`` are not shown. Scores are
kept in the server's stage cache by pool version, endpoint, question, query and item, so a query
asked again costs no calls. Calls for one selection run ``concurrency`` at a time, and never more
than the endpoint's ``judge_concurrency`` at once over the whole server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from pydantic import Field

from exemplar.errors import Incompatible, NotFound, UpstreamTimeout
from exemplar.retrieval.prompting import ImageSource, query_content
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.stages.base import StageContext, register_stage
from exemplar.retrieval.serving.strategies.base import Params, Pick

if TYPE_CHECKING:
    from exemplar.retrieval.mllm import MLLMClient, TokenLogprob

__all__ = ["DEFAULT_QUESTION", "RerankParams", "RerankStage", "judge_messages", "yes_probability"]

DEFAULT_QUESTION = "Is this example relevant to the query? Answer Yes or No."
MAX_RETRIEVE = 256
MAX_CONCURRENCY = 32


class RerankParams(Params):
    mllm: str = Field(min_length=1, max_length=256, description="The configured model endpoint that judges "
                      "(EXEMPLAR_MLLM_ENDPOINTS; GET /v1/models lists them).")
    retrieve_k: int = Field(16, ge=1, le=MAX_RETRIEVE, description="Candidates judged: the strategy's first "
                            "'retrieve_k' (of each class, where quotas apply); one judge call each, unless cached.")
    top_n: int | None = Field(None, ge=1, le=MAX_RETRIEVE, description="Candidates kept, best judged first "
                              "(of each class, where quotas apply); null: every judged candidate.")
    min_score: float | None = Field(None, ge=0.0, le=1.0, description="Drop candidates the judge gives a "
                                    "lower P(Yes); null: keep all.")
    question: str = Field(DEFAULT_QUESTION, min_length=1, max_length=2000, description="Asked after the query "
                          "and the candidate are shown; the score is the probability of a first token 'Yes'.")
    concurrency: int = Field(8, ge=1, le=MAX_CONCURRENCY, description="Judge calls in flight at once for one "
                             "selection (the endpoint's judge_concurrency bounds them over all requests).")


def yes_probability(tokens: tuple[TokenLogprob, ...]) -> float:
    """P("Yes") of the first generated token: its alternatives that read "yes", summed (a tokenizer
    may offer "Yes" and " yes" apart); the token itself stands in for a missing alternatives list."""
    if not tokens:
        return 0.0
    first = tokens[0]
    alternatives = first.top or ((first.token, first.logprob),)
    total = sum(math.exp(logprob) for token, logprob in alternatives
                if token.strip().strip(".,!:;\"'").lower() == "yes" and logprob > -math.inf)
    return min(max(total, 0.0), 1.0)


def _part(label: str, text: str | None, image_url: str | None) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": f"{label}: {text}" if text else f"{label}:"}]
    if image_url:
        parts.append({"type": "image_url", "image_url": {"url": image_url}})
    return parts


def judge_messages(query: tuple[str | None, str | None], candidate: tuple[str | None, str | None],
                   question: str) -> list[dict[str, Any]]:
    """One user turn: the query (text, image URL), the candidate (text, image URL), the question."""
    content = [*_part("Query", *query), *_part("Candidate", *candidate), {"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def _query_identity(context: StageContext) -> tuple[str, str]:
    query = context.query
    assert query is not None
    if query.item_id is not None:
        return ("item", query.item_id)
    digest = hashlib.sha256()
    digest.update(query.image or b"")
    digest.update(b"\0")
    digest.update((query.text or "").encode())
    return ("content", digest.hexdigest())


class RerankStage:
    name = "rerank"
    description = ("RagLLaVA: a model endpoint judges the strategy's first candidates (P of 'Yes' to a relevance "
                   "question) and they are re-ordered by its score.")
    position = 10
    Params = RerankParams

    def depth(self, params: RerankParams) -> int:
        return params.retrieve_k

    def apply(self, space: Snapshot, candidates: list[Pick], params: RerankParams,
              context: StageContext) -> list[Pick]:
        judged = candidates[:params.retrieve_k]
        if not judged:
            return []
        client = self._client(context, params)
        scores = self._scores(context, client, judged, params)
        order = sorted(range(len(judged)), key=lambda i: -scores[i])  # stable: ties keep the strategy's order
        kept = [dataclasses.replace(judged[i], judge_score=scores[i]) for i in order
                if params.min_score is None or scores[i] >= params.min_score]
        return kept[:params.top_n] if params.top_n is not None else kept

    @staticmethod
    def _client(context: StageContext, params: RerankParams) -> MLLMClient:
        if context.mllms is None:
            raise Incompatible("this server has no model endpoints to judge with", param="rerank.mllm")
        if context.query is None:
            raise Incompatible("rerank judges candidates against one query; a shared set stands for several",
                               param="rerank")
        query = context.query
        if query.image is None and query.text is None and query.item_id is None:
            raise Incompatible("rerank shows the query to a judge model: give an image, a text or an item_id "
                               "(an embedding cannot be shown)", param="rerank")
        try:
            return context.mllms.get(params.mllm)
        except NotFound as exc:
            exc.param = "rerank.mllm"
            raise

    def _scores(self, context: StageContext, client: MLLMClient, judged: list[Pick],
                params: RerankParams) -> list[float]:
        snap = context.snap
        config = client.config
        base = ("rerank", snap.pool, snap.version, client.name, config.base_url, config.model, params.question,
                _query_identity(context))
        keys = [(*base, snap.ids[p.row]) for p in judged]
        scores: list[float | None] = [context.cache.get(key) for key in keys]
        todo = [i for i, s in enumerate(scores) if s is None]
        if todo:
            images = ImageSource(snap, config)
            asked = query_content(snap, context.query, images)  # type: ignore[arg-type] - checked in _client
            query = (asked.fields["text"], asked.image_url())
            slots = context.mllms.slots(client.name)  # type: ignore[union-attr] - checked in _client
            # A call waits for a slot at most as long as one call may take with its retries.
            patience = config.timeout_s * (config.max_retries + 1) + config.backoff_s * 2 ** config.max_retries

            def judge(i: int) -> float:
                row = judged[i].row
                messages = judge_messages(query, (snap.texts[row], images.url(row)), params.question)
                if not slots.acquire(timeout=patience):
                    raise UpstreamTimeout(f"model endpoint {client.name!r} stayed busy with other judge calls "
                                          f"for {patience:g} s")
                try:
                    completion = client.complete(messages, max_tokens=1, temperature=0.0)
                finally:
                    slots.release()
                return yes_probability(completion.tokens)

            with ThreadPoolExecutor(max_workers=min(params.concurrency, len(todo)),
                                    thread_name_prefix="rerank") as pool:
                futures = {pool.submit(judge, i): i for i in todo}
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for future in pending:  # after a failure: the calls not started are not made
                    future.cancel()
                for future in done:
                    if future.exception() is not None:
                        raise future.exception()  # type: ignore[misc]
                for future, i in futures.items():
                    scores[i] = future.result()
                    context.cache.put(keys[i], scores[i])
        return [float(s) for s in scores]  # type: ignore[arg-type]


register_stage(RerankStage)
