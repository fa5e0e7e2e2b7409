from __future__ import annotations

import math

import pytest

from exemplar.errors import InvalidRequest
from exemplar.retrieval.confidence import confidence
from exemplar.retrieval.mllm import TokenLogprob

L = math.log


def tok(token: str, p: float, *alternatives: tuple[str, float]) -> TokenLogprob:
    top = sorted([(token, L(p)), *((t, L(q)) for t, q in alternatives)], key=lambda x: -x[1])
    return TokenLogprob(token, L(p), tuple(top))


TOKENS = (tok("mel", 0.6, ("nev", 0.3), ("M", 0.05)), tok("anoma", 0.9, ("oma", 0.05)), tok(".", 0.4, ("!", 0.5)))


def test_min_token_prob_takes_the_top_candidate_at_each_position() -> None:
    # position 3: the sampled "." (0.4) was not the top candidate ("!" 0.5): VideoICL's measure uses the top.
    assert confidence("min_token_prob", TOKENS, "melanoma.") == pytest.approx(0.5)


def test_mean_token_logprob_is_the_geometric_mean_probability() -> None:
    assert confidence("mean_token_logprob", TOKENS, "melanoma.") == pytest.approx((0.6 * 0.9 * 0.4) ** (1 / 3))


def test_first_token_prob() -> None:
    assert confidence("first_token_prob", TOKENS, "melanoma.") == pytest.approx(0.6)


def test_label_prob_sums_candidates_that_begin_the_answer() -> None:
    assert confidence("label_prob", TOKENS, "Melanoma") == pytest.approx(0.65)  # "mel" + "M"
    assert confidence("label_prob", TOKENS, "nevus") == pytest.approx(0.3)


def test_edge_cases() -> None:
    assert confidence("min_token_prob", (), "x") == 0.0
    bare = (TokenLogprob("yes", L(0.7), ()),)
    assert confidence("min_token_prob", bare, "yes") == pytest.approx(0.7)
    with pytest.raises(InvalidRequest, match="valid: 'first_token_prob', 'label_prob'"):
        confidence("vibes", TOKENS, "x")
