"""Confidence of a model answer from its token log-probabilities, each in [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from exemplar.errors import InvalidRequest, choices
from exemplar.retrieval.mllm import TokenLogprob

__all__ = ["CONFIDENCE_MEASURES", "confidence", "normalise_answer"]


def normalise_answer(text: str) -> str:
    return text.strip().strip(".").strip().lower()


def _top_prob(token: TokenLogprob) -> float:
    return math.exp(token.top[0][1]) if token.top else math.exp(token.logprob)


def min_token_prob(tokens: Sequence[TokenLogprob], answer: str) -> float:
    """VideoICL: the lowest, over generated tokens, of the most likely token's probability."""
    return min(_top_prob(t) for t in tokens)


def mean_token_logprob(tokens: Sequence[TokenLogprob], answer: str) -> float:
    """exp of the mean log-probability of the generated tokens: their geometric-mean probability."""
    return math.exp(sum(t.logprob for t in tokens) / len(tokens))


def first_token_prob(tokens: Sequence[TokenLogprob], answer: str) -> float:
    return math.exp(tokens[0].logprob)


def label_prob(tokens: Sequence[TokenLogprob], answer: str) -> float:
    """Probability mass, at the first generated position, of the returned candidates that begin the
    chosen answer (case-insensitive): how sure the model was of this label as it started it."""
    target = normalise_answer(answer)
    first = tokens[0]
    candidates = first.top or ((first.token, first.logprob),)
    mass = sum(math.exp(lp) for token, lp in candidates if token.strip() and target.startswith(token.strip().lower()))
    return min(1.0, mass)


CONFIDENCE_MEASURES: dict[str, Callable[[Sequence[TokenLogprob], str], float]] = {
    "min_token_prob": min_token_prob,
    "mean_token_logprob": mean_token_logprob,
    "first_token_prob": first_token_prob,
    "label_prob": label_prob,
}


def confidence(measure: str, tokens: Sequence[TokenLogprob], answer: str) -> float:
    try:
        fn = CONFIDENCE_MEASURES[measure]
    except KeyError:
        raise InvalidRequest(f"unknown confidence measure {measure!r}; valid: {choices(CONFIDENCE_MEASURES)}",
                             param="confidence") from None
    if not tokens:
        return 0.0
    return float(min(1.0, max(0.0, fn(tokens, answer))))
