"""The OpenAI-compatible routes through the client: demonstrations added to a chat request, the
request passed through without them, the configured models, and errors in the OpenAI shape."""

from __future__ import annotations

import asyncio
import base64

import pytest
from support import TIMEOUT_S

from exemplar_client import AsyncExemplar, Exemplar, NotFoundError


def _query(client: Exemplar, pool: str) -> tuple[str, dict[str, object]]:
    item = next(client.iter_items(pool, page_size=5))
    image = base64.b64encode(client.get_item_image(pool, item.id)).decode()
    return item.id, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                                                 {"type": "text", "text": "Which shape is this?"}]}


def test_chat_adds_demonstrations_and_reports_them(client: Exemplar, shapes_pool: str, mllm: str) -> None:
    item_id, query = _query(client, shapes_pool)
    labels = set(client.get_pool(shapes_pool).labels)
    answer = client.chat(model=mllm, messages=[query], max_tokens=4,
                         exemplar={"pool": shapes_pool, "strategy": "balanced", "k_per_class": 1})
    assert answer.exemplar is not None and answer.exemplar.pool == shapes_pool
    shown = answer.exemplar.demonstrations
    assert len(shown) == len(labels) and {d.label for d in shown} == labels
    assert answer.content in labels and answer.exemplar.trimmed is None
    # The same selection as select gives for the same image.
    image = query["content"][0]["image_url"]["url"].split(",", 1)[1]  # type: ignore[index]
    selected = client.select(shapes_pool, query={"image": base64.b64decode(image)}, strategy="balanced", k_per_class=1)
    assert [d.id for d in selected.demonstrations] == [d.id for d in shown]


def test_chat_without_exemplar_passes_through(client: Exemplar, mllm: str) -> None:
    answer = client.chat(model=mllm, messages=[{"role": "user", "content": "hello"}])
    assert answer.exemplar is None and answer.choices and "usage" in (answer.model_extra or {})


def test_models_and_errors(client: Exemplar, shapes_pool: str, mllm: str) -> None:
    assert mllm in [m.id for m in client.list_models()]
    with pytest.raises(NotFoundError) as caught:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.param == "model" and caught.value.status == 404
    with pytest.raises(ValueError, match="openai package"):
        client.chat(model=mllm, messages=[{"role": "user", "content": "hi"}], stream=True)


def test_async_chat(server_url: str, api_key: str | None, shapes_pool: str, mllm: str) -> None:
    async def main() -> list[int]:
        async with AsyncExemplar(server_url, api_key=api_key, timeout=TIMEOUT_S) as ex:
            answers = await asyncio.gather(*(ex.chat(model=mllm, messages=[{"role": "user", "content": f"a {shape}"}],
                                                     exemplar={"pool": shapes_pool, "k": k})
                                             for k, shape in ((2, "circle"), (3, "square"))))
            assert mllm in [m.id for m in await ex.list_models()]
            return [len(a.exemplar.demonstrations) for a in answers if a.exemplar is not None]

    assert asyncio.run(asyncio.wait_for(main(), timeout=120)) == [2, 3]
