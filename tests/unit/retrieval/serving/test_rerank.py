"""The rerank stage's parts that need no model: P(Yes) from logprobs, the prompt, the bounded cache."""

from __future__ import annotations

import math

import pytest

from exemplar.retrieval.mllm import TokenLogprob
from exemplar.retrieval.serving.stages import StageCache
from exemplar.retrieval.serving.stages.rerank import judge_messages, yes_probability


def token(answer: str, *top: tuple[str, float]) -> TokenLogprob:
    return TokenLogprob(answer, dict(top).get(answer, -1.0), tuple((t, math.log(p)) for t, p in top))


def test_yes_probability_sums_the_spellings_of_yes() -> None:
    assert yes_probability((token("Yes", ("Yes", 0.5), (" yes", 0.2), ("YES.", 0.05), ("No", 0.25)),)) \
        == pytest.approx(0.75)
    assert yes_probability((token("No", ("No", 0.9), ("Maybe", 0.1)),)) == 0.0, "no yes among the alternatives"
    assert yes_probability((token("No", ("No", 0.6), ("yes", 0.4)), token("Yes", ("Yes", 1.0)))) \
        == pytest.approx(0.4), "only the first generated token counts"
    assert yes_probability(()) == 0.0
    bare = TokenLogprob(" Yes", math.log(0.8), ())  # an endpoint that lists no alternatives
    assert yes_probability((bare,)) == pytest.approx(0.8)
    assert yes_probability((token("Yes", ("Yes", 0.7), ("yes", 0.7)),)) == 1.0, "held within [0, 1]"


def test_the_judge_sees_query_then_candidate_then_question() -> None:
    (turn,) = judge_messages(("a red ball", "data:image/png;base64,AA"), (None, "data:image/png;base64,BB"), "Q?")
    assert turn["role"] == "user"
    assert [(p["type"], p.get("text") or p["image_url"]["url"]) for p in turn["content"]] == [
        ("text", "Query: a red ball"), ("image_url", "data:image/png;base64,AA"),
        ("text", "Candidate:"), ("image_url", "data:image/png;base64,BB"), ("text", "Q?")]


def test_stage_cache_is_bounded_and_keeps_the_recently_used() -> None:
    cache = StageCache(max_entries=2)
    cache.put("a", 0.1)
    cache.put("b", 0.2)
    assert cache.get("a") == 0.1  # now the most recent
    cache.put("c", 0.3)
    assert len(cache) == 2 and cache.get("b") is None and cache.get("a") == 0.1 and cache.get("c") == 0.3
