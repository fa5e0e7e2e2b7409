"""Prompt assembly for in-context learning: one user turn per demonstration (its image and text)
followed by an assistant turn with its label, and the query last."""

from __future__ import annotations

import base64
import dataclasses
import mimetypes
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from exemplar.errors import Incompatible, InvalidRequest
from exemplar.retrieval.store.items import sniff_image

__all__ = ["DemoContent", "PromptTemplate", "build_messages", "data_uri", "render"]

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_LOOKS_LIKE_PLACEHOLDER = re.compile(r"\{(\w[^{}]*)\}")
FIELDS = ("text", "label", "domain", "id")


def render(template: str, fields: dict[str, str | None]) -> str:
    """Fill ``{name}`` placeholders; only plain names, so a template cannot reach attributes."""
    return _PLACEHOLDER.sub(lambda m: fields.get(m.group(1)) or "" if m.group(1) in fields else m.group(0), template)


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    system: str | None = None
    instruction: str | None = None  # added to every user turn (demonstrations and query), e.g. the question
    demo_text: str = "{text}"
    answer: str = "{label}"
    query_text: str = "{text}"
    include_images: bool = True

    def check(self) -> None:
        for name in ("demo_text", "answer", "query_text"):
            unknown = [p for p in _LOOKS_LIKE_PLACEHOLDER.findall(getattr(self, name)) if p not in FIELDS]
            if unknown:
                raise InvalidRequest(f"unknown placeholder {{{unknown[0]}}} in {name}; valid: "
                                     + ", ".join(f"{{{f}}}" for f in FIELDS), param=f"prompt.{name}")


@dataclasses.dataclass(frozen=True)
class DemoContent:
    """What a prompt shows of one item: its fields and a way to get its image as a URL."""

    fields: dict[str, str | None]
    image_url: Callable[[], str | None]


def data_uri(data: bytes, name: str = "") -> str:
    mime = mimetypes.guess_type(name)[0] if name else None
    if mime is None or not mime.startswith("image/"):
        sniffed = sniff_image(data)
        mime = sniffed[1] if sniffed else "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def read_image(root: Path, reference: str) -> bytes:
    """Read an item's image, refusing any path that resolves outside its media root."""
    real_root = root.resolve()
    path = (real_root / reference).resolve()
    if real_root not in path.parents:
        raise InvalidRequest("an item's image path leaves its media root", param="image")
    return path.read_bytes()


def _user_turn(text: str, image_url: str | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if image_url:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def build_messages(
    template: PromptTemplate, demos: Sequence[DemoContent], query: DemoContent, *, max_images: int
) -> list[dict[str, Any]]:
    def text_of(body: str, fields: dict[str, str | None]) -> str:
        rendered = render(body, fields)
        return f"{template.instruction}\n{rendered}".strip() if template.instruction else rendered

    images = 0
    messages: list[dict[str, Any]] = []
    if template.system:
        messages.append({"role": "system", "content": template.system})
    for item in [*demos, query]:
        url = item.image_url() if template.include_images else None
        if url:
            images += 1
            if images > max_images:
                raise Incompatible(f"the prompt would hold more than {max_images} images; use a smaller window "
                                     "or include_images=false", param="window")
        body = template.query_text if item is query else template.demo_text
        messages.append(_user_turn(text_of(body, item.fields), url))
        if item is not query:
            messages.append({"role": "assistant", "content": render(template.answer, item.fields)})
    return messages
