from __future__ import annotations

import os
from pathlib import Path

import pytest

from exemplar.errors import InvalidRequest
from exemplar.retrieval.prompting import DataUriCache, DemoContent, PromptTemplate, build_messages, data_uri, read_image, render
from tests.helpers import png_bytes


def demo(label: str, text: str, image: str | None = "data:image/png;base64,AA==") -> DemoContent:
    return DemoContent({"text": text, "label": label, "domain": "site-1", "id": f"id-{label}"}, lambda: image)


def test_one_user_turn_per_demonstration_then_its_label_and_the_query_last() -> None:
    query = DemoContent({"text": "what is this?", "label": None, "domain": None, "id": None}, lambda: "data:q")
    messages = build_messages(PromptTemplate(system="Be brief."), [demo("cat", "a photo"), demo("dog", "a photo")],
                              query, max_images=8)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                                      {"type": "text", "text": "a photo"}]
    assert [messages[2]["content"], messages[4]["content"]] == ["cat", "dog"]
    assert messages[-1]["content"][0]["image_url"]["url"] == "data:q"


def test_templates_and_instruction() -> None:
    template = PromptTemplate(instruction="Which animal?", demo_text="[{domain}] {text}", answer="Answer: {label}",
                              query_text="{text}", include_images=False)
    query = DemoContent({"text": "new one", "label": None, "domain": None, "id": None}, lambda: "data:q")
    messages = build_messages(template, [demo("cat", "furry")], query, max_images=0)
    assert messages[0]["content"] == [{"type": "text", "text": "Which animal?\n[site-1] furry"}]
    assert messages[1]["content"] == "Answer: cat"
    assert messages[2]["content"] == [{"type": "text", "text": "Which animal?\nnew one"}]


def test_render_only_fills_plain_names() -> None:
    assert render("{text} {label} {text.__class__} {nope}", {"text": "t", "label": None}) == "t  {text.__class__} {nope}"
    with pytest.raises(InvalidRequest) as info:
        PromptTemplate(answer="{label.upper}").check()
    assert info.value.param == "prompt.answer"
    PromptTemplate(demo_text='{"json": "ok"} {text}').check()


def test_image_limit() -> None:
    query = DemoContent({"text": "q"}, lambda: "data:q")
    with pytest.raises(InvalidRequest, match="more than 2 images"):
        build_messages(PromptTemplate(), [demo("a", "x"), demo("b", "y")], query, max_images=2)


def test_data_uri_and_reading_under_the_media_root(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes())
    assert data_uri(read_image(tmp_path, "a.png"), "a.png").startswith("data:image/png;base64,iVBOR")
    assert data_uri(png_bytes(fmt="JPEG")).startswith("data:image/jpeg;base64,")
    outside = tmp_path.parent / f"{tmp_path.name}-x.png"
    outside.write_bytes(png_bytes())
    (tmp_path / "link.png").symlink_to(outside)
    with pytest.raises(InvalidRequest):
        read_image(tmp_path, "link.png")
    with pytest.raises(InvalidRequest):
        read_image(tmp_path, "../x.png")
    outside.unlink()


def test_data_uri_cache_reads_a_replaced_file_afresh_and_stays_bounded(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n"
    (tmp_path / "a.png").write_bytes(png + b"a" * 100)
    cache = DataUriCache(max_bytes=400)
    first = cache.get(tmp_path, "a.png")
    assert first == data_uri(png + b"a" * 100, "a.png") and cache.get(tmp_path, "a.png") == first
    (tmp_path / "a.png").write_bytes(png + b"b" * 120)
    os.utime(tmp_path / "a.png", ns=(1, 1))  # a new size and time: another file
    assert cache.get(tmp_path, "a.png") == data_uri(png + b"b" * 120, "a.png")
    for name in ("b.png", "c.png", "d.png"):
        (tmp_path / name).write_bytes(png + name.encode() * 40)
        cache.get(tmp_path, name)
    assert cache._bytes <= 400 and len(cache._entries) < 5
    with pytest.raises(InvalidRequest):
        cache.get(tmp_path, "../outside.png")
    # A cached file replaced by a link out of the media root is checked again, and refused.
    (tmp_path.parent / "secret.png").write_bytes(png + b"s" * 10)
    cache.get(tmp_path, "d.png")
    (tmp_path / "d.png").unlink()
    (tmp_path / "d.png").symlink_to(tmp_path.parent / "secret.png")
    with pytest.raises(InvalidRequest):
        cache.get(tmp_path, "d.png")
