"""The chat core's own rules: which message is the query, and how demonstrations are fitted into the
endpoint's limits (lowest-ranked left out first, the caller's messages never)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from exemplar.errors import InvalidRequest
from exemplar.retrieval.chat import _fit, query_of
from exemplar.retrieval.mllm import EndpointConfig
from exemplar.retrieval.prompting import count_images
from exemplar.retrieval.serving.selection import Demonstration

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
DATA_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()


def _image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def test_query_is_the_last_user_messages_image_else_its_text() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "first"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "which?"}, _image(DATA_URI)]}]
    at, query = query_of(messages)
    assert at == 3 and query.image == PNG and query.text is None
    at, query = query_of(messages[:3])
    assert at == 1 and query.text == "first"
    # An image given as a URL is never fetched: the text is the query.
    at, query = query_of([{"role": "user", "content": [_image("https://example.com/a.png"),
                                                       {"type": "text", "text": "a cat"}]}])
    assert query.text == "a cat" and query.image is None
    # With fusion the image and the text are both the query (weighted by the request).
    at, query = query_of(messages, both=True)
    assert at == 3 and query.image == PNG and query.text == "which?"
    assert query_of(messages[:3], both=True)[1].text == "first"


@pytest.mark.parametrize(("messages", "param", "words"), [
    ([{"role": "system", "content": "s"}], "messages", "user message"),
    ([{"role": "user", "content": [_image("https://example.com/a.png")]}], "messages[0].content", "data URI"),
    ([{"role": "user", "content": [_image("data:image/png;base64,@@@")]}], "messages[0].content[0].image_url.url",
     "base64"),
    ([{"role": "user", "content": "   "}], "messages[0].content", "neither"),
    ([{"role": "user"}], "messages[0].content", "no content"),
])
def test_query_refusals_name_the_message(messages: list[dict[str, Any]], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        query_of(messages)
    assert refused.value.param == param and words in refused.value.message


def _demos(ranks: list[int]) -> list[Demonstration]:
    return [Demonstration(id=f"d{r}", label=f"l{r}", text=f"text {r}", image=None, domain=None, score=1.0 - r / 100,
                          rank=r, metadata={}) for r in ranks]


def _turns(demos: list[Demonstration], image: bool) -> list[list[dict[str, Any]]]:
    user: list[dict[str, Any]] = [{"type": "text", "text": d.text or ""} for d in demos]
    return [[{"role": "user", "content": ([_image(DATA_URI)] if image else []) + [part]},
             {"role": "assistant", "content": d.label}] for d, part in zip(demos, user)]


def _config(**limits: int) -> EndpointConfig:
    return EndpointConfig(base_url="http://127.0.0.1:1/v1", model="m", **limits)  # type: ignore[arg-type]


def _base() -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "system", "content": "sys"},
                                       {"role": "user", "content": [_image(DATA_URI), {"type": "text", "text": "q"}]}]}


def test_fit_keeps_everything_within_limits_in_prompt_order() -> None:
    demos = _demos([3, 0, 2, 1])  # prompt order as the selection's 'order' left it
    content, shown, trim = _fit(_base(), 1, demos, _turns(demos, image=True), _config())
    sent = json.loads(content)
    assert trim is None and [d.rank for d in shown] == [3, 0, 2, 1]
    assert [m["role"] for m in sent["messages"]] == ["system"] + ["user", "assistant"] * 4 + ["user"]
    assert [m["content"] for m in sent["messages"] if m["role"] == "assistant"] == ["l3", "l0", "l2", "l1"]
    assert sent["messages"][-1] == _base()["messages"][-1]


def test_fit_drops_the_lowest_ranked_for_images() -> None:
    demos = _demos([3, 0, 2, 1, 4])
    content, shown, trim = _fit(_base(), 1, demos, _turns(demos, image=True), _config(max_images=3))
    assert sorted(d.rank for d in shown) == [0, 1] and [d.rank for d in shown] == [0, 1]
    assert trim is not None and trim.reason == "max_images" and trim.limit == 3 and trim.ids == ["d4", "d3", "d2"]
    assert count_images(json.loads(content)["messages"]) == 3


@pytest.mark.parametrize("limit", [200, 400, 520, 700, 900, 10_000])
def test_fit_respects_prompt_bytes_exactly(limit: int) -> None:
    demos = _demos([2, 0, 1, 3, 5, 4])
    base = {"model": "m", "messages": [{"role": "user", "content": "a question é"}]}
    content, shown, trim = _fit(base, 0, demos, _turns(demos, image=False), _config(max_prompt_bytes=limit))
    kept = sorted(d.rank for d in shown)
    assert kept == list(range(len(kept)))  # the best ones
    if trim is None:
        assert len(content) <= limit and len(shown) == 6
    elif kept:
        assert len(content) <= limit and trim.reason == "max_prompt_bytes"
        # One more demonstration would not have fitted.
        more = _demos(sorted(d.rank for d in demos)[: len(kept) + 1])
        bigger, _, _ = _fit(base, 0, more, _turns(more, image=False), _config())
        assert len(bigger) > limit
    else:
        assert len(content) == len(json.dumps(base, ensure_ascii=False, separators=(",", ":")).encode())
    assert json.loads(content)["messages"][-1] == base["messages"][-1]


def test_fit_sends_text_without_a_utf8_form_escaped() -> None:
    demos = _demos([0, 1])
    base = {"model": "m", "messages": [{"role": "user", "content": "lone \ud800 surrogate"}]}
    content, shown, trim = _fit(base, 0, demos, _turns(demos, image=False), _config())
    assert json.loads(content)["messages"][-1]["content"] == "lone \ud800 surrogate"
    assert len(shown) == 2 and trim is None
