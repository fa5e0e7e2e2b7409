"""An image pool: images by path, bytes and PIL-like objects, item images, and the infer loop."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from support import fresh_name

from exemplar_client import Exemplar, NotFoundError


class PILLike:
    """Stands for a PIL image (PIL is not a dependency): writes the bytes it holds."""

    mode = "RGB"

    def __init__(self, data: bytes) -> None:
        self.data = data

    def save(self, out: io.BytesIO, format: str) -> None:  # noqa: A002 - PIL's name
        out.write(self.data)


def test_item_images_come_back_as_bytes(client: Exemplar, shapes_pool: str) -> None:
    item = next(client.iter_items(shapes_pool, page_size=5))
    data = client.get_item_image(shapes_pool, item.id)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff"
    with pytest.raises(NotFoundError) as caught:
        client.get_item_image(shapes_pool, "no-such-item")
    assert caught.value.param == "item_id"


def test_images_added_from_paths_bytes_and_pil_images_are_found_by_image(client: Exemplar, shapes_pool: str,
                                                                         tmp_path: Path) -> None:
    source = list(client.iter_items(shapes_pool, page_size=50))[:3]
    images = [client.get_item_image(shapes_pool, i.id) for i in source]
    path = tmp_path / "first.img"
    path.write_bytes(images[0])
    name = fresh_name("img")
    client.create_pool(name=name)  # the server's default encoder, on images
    try:
        added = client.add_items(name, [
            {"id": "by-path", "label": source[0].label, "image": path},
            {"id": "by-bytes", "label": source[1].label, "image": images[1]},
            {"id": "by-pil", "label": source[2].label, "image": PILLike(images[2])},
        ])
        assert added.size == 3
        for query, expected in ((str(path), "by-path"), (images[1], "by-bytes"), (PILLike(images[2]), "by-pil")):
            best = client.select(name, query={"image": query}, k=1).demonstrations[0]
            assert best.id == expected and best.score == pytest.approx(1.0, abs=1e-3)
    finally:
        client.delete_pool(name)


def test_infer_runs_the_loop_against_the_model(client: Exemplar, shapes_pool: str, mllm: str) -> None:
    item = next(client.iter_items(shapes_pool, page_size=5))
    result = client.infer(shapes_pool, query={"item_id": item.id}, mllm=mllm, strategy="balanced", window=2,
                          max_rounds=3, prompt={"instruction": "Which shape is this?"})
    labels = set(client.get_pool(shapes_pool).labels)
    assert result.answer in labels and result.stopped in ("confident", "max_rounds", "exhausted")
    assert 1 <= len(result.rounds) <= 3 and result.rounds[result.chosen_round].answer == result.answer
    shown = [d.id for r in result.rounds for d in r.demonstrations]
    assert len(shown) == len(set(shown)) and item.id not in shown
    with pytest.raises(NotFoundError) as caught:
        client.infer(shapes_pool, query={"item_id": item.id}, mllm="no-such-model")
    assert caught.value.param == "mllm"


def test_infer_batch_answers_per_query(client: Exemplar, shapes_pool: str, mllm: str) -> None:
    items = list(client.iter_items(shapes_pool, page_size=10))[:3]
    result = client.infer_batch(shapes_pool, queries=[{"item_id": i.id} for i in items], mllm=mllm, k_per_class=1,
                                queries_per_call=2, seed=1)
    assert [r.index for r in result.results] == [0, 1, 2] and [r.call for r in result.results] == [0, 0, 1]
    assert len(result.calls) == 2 and result.answered + result.failed == 3
    assert {d.id for d in result.demonstrations}.isdisjoint({i.id for i in items})
    # The scripted model answers one label, not numbered lines: each query's failure is its own.
    assert all((r.answer is None) == (r.error is not None) for r in result.results)


def test_infer_batch_reports_what_each_call_showed(client: Exemplar, shapes_pool: str, mllm: str) -> None:
    items = list(client.iter_items(shapes_pool, page_size=10))[:4]
    result = client.infer_batch(shapes_pool, queries=[{"item_id": i.id} for i in items], mllm=mllm, k_per_class=2,
                                queries_per_call=2, seed=1, reshuffle=True, demo_labels={"noise": 1.0})
    assert result.shuffle_seed is None and len(result.calls) == 2
    for call in result.calls:
        assert isinstance(call.shuffle_seed, int)
        assert sorted(d.id for d in call.demonstrations) == sorted(d.id for d in result.demonstrations)
        assert all(d.shown_label != d.label for d in call.demonstrations), "noise 1 changes every label"
    again = client.infer_batch(shapes_pool, queries=[{"item_id": i.id} for i in items], mllm=mllm, k_per_class=2,
                               queries_per_call=2, seed=1, shuffle_seed=result.calls[1].shuffle_seed)
    assert [d.id for d in again.demonstrations] == [d.id for d in result.calls[1].demonstrations]
