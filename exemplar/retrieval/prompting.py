"""Prompt assembly for in-context learning: one user turn per demonstration (its image and text)
followed by an assistant turn with its label, and the query last."""

from __future__ import annotations

import base64
import dataclasses
import mimetypes
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exemplar.errors import Conflict, Incompatible, InvalidRequest
from exemplar.retrieval.store.items import sniff_image

if TYPE_CHECKING:  # annotations only: selection's stages build prompts, so importing it here would cycle
    from exemplar.retrieval.mllm import EndpointConfig
    from exemplar.retrieval.serving.selection import Demonstration, Query
    from exemplar.retrieval.serving.snapshot import Snapshot

__all__ = ["DataUriCache", "DemoContent", "ImageSource", "PromptTemplate", "build_messages", "check_shown_query",
           "count_images", "data_uri", "demo_content", "demonstration_turns", "query_content", "render"]

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


def _media_path(root: Path, reference: str) -> Path:
    """An item's image file, refusing any path that resolves outside its media root."""
    real_root = root.resolve()
    path = (real_root / reference).resolve()
    if real_root not in path.parents:
        raise InvalidRequest("an item's image path leaves its media root", param="image")
    return path


def read_image(root: Path, reference: str) -> bytes:
    return _media_path(root, reference).read_bytes()


class DataUriCache:
    """Images recently put in prompts, as data URIs: the best demonstrations of a pool come back in
    prompt after prompt, and reading, encoding and even resolving their paths again is most of a
    prompt's cost. An entry holds for the file as it was: one ``lstat`` per use checks that it is
    still that regular file (size and modification time), or it is resolved and read afresh."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[Path, str], tuple[Path, int, int, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, root: Path, reference: str) -> str:
        key = (root, reference)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None:
            path, size, mtime, uri = entry
            try:
                # No symlinks followed: a link put in the file's place is resolved (and checked) afresh.
                found = os.stat(path, follow_symlinks=False)
            except OSError:
                found = None
            if found is not None and stat.S_ISREG(found.st_mode) and (found.st_size, found.st_mtime_ns) == (size, mtime):
                with self._lock:
                    if key in self._entries:
                        self._entries.move_to_end(key)
                return uri
        path = _media_path(root, reference)
        found = os.stat(path)  # before reading: a change after it is seen at the next use
        uri = data_uri(path.read_bytes(), reference)
        if len(uri) <= self.max_bytes:
            with self._lock:
                old = self._entries.pop(key, None)
                self._bytes -= len(old[3]) if old else 0
                self._entries[key] = (path, found.st_size, found.st_mtime_ns, uri)
                self._bytes += len(uri)
                while self._bytes > self.max_bytes:
                    _, evicted = self._entries.popitem(last=False)
                    self._bytes -= len(evicted[3])
        return uri


_DATA_URIS = DataUriCache()


class ImageSource:
    """An item's image as the endpoint wants it: a data URI read from the media root, or a URL."""

    def __init__(self, snap: Snapshot, config: EndpointConfig) -> None:
        self.snap = snap
        self.config = config

    def url(self, row: int) -> str | None:
        reference, root = self.snap.images[row], self.snap.image_root(row)
        if reference is None:
            return None
        if self.config.image_mode == "url":
            assert self.config.media_url_template is not None
            return render(self.config.media_url_template, {"pool": self.snap.pool, "image": reference,
                                                           "id": self.snap.ids[row]})
        if root is None:
            return None
        try:
            return _DATA_URIS.get(root, reference)
        except OSError as exc:
            raise Conflict(f"the image of item {self.snap.ids[row]!r} cannot be read ({type(exc).__name__}); "
                           "its media file is missing or unreadable", param="image") from None


def check_shown_query(query: Query, param: str) -> None:
    """A query shown to a model must be something a model can see: an image, a text or a pool item."""
    if query.empty:
        raise InvalidRequest("a query shown to the model needs 'image', 'text' or 'item_id'", param=param)
    if query.embedding is not None:
        raise InvalidRequest("the query is shown to the model: give 'image', 'text' or 'item_id', not an embedding",
                             param=f"{param}.embedding")


def demo_content(snap: Snapshot, demo: Demonstration, images: ImageSource) -> DemoContent:
    row = snap.row_of[demo.id]
    fields = {"text": demo.text, "label": demo.label, "domain": demo.domain, "id": demo.id}
    return DemoContent(fields, lambda: images.url(row))


def query_content(snap: Snapshot, query: Query, images: ImageSource) -> DemoContent:
    if query.item_id is not None:
        row = snap.row_of[query.item_id]
        fields = {"text": snap.texts[row], "label": None, "domain": snap.domain_of(row), "id": query.item_id}
        return DemoContent(fields, lambda: images.url(row))
    image = query.image
    return DemoContent({"text": query.text, "label": None, "domain": None, "id": None},
                       lambda: data_uri(image) if image is not None else None)


def _user_turn(text: str, image_url: str | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if image_url:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def _with_instruction(template: PromptTemplate, body: str, fields: dict[str, str | None]) -> str:
    rendered = render(body, fields)
    return f"{template.instruction}\n{rendered}".strip() if template.instruction else rendered


def demonstration_turns(template: PromptTemplate, demo: DemoContent) -> list[dict[str, Any]]:
    """One demonstration as the model sees it: a user turn (its image and text), then an assistant
    turn with its answer."""
    url = demo.image_url() if template.include_images else None
    return [_user_turn(_with_instruction(template, template.demo_text, demo.fields), url),
            {"role": "assistant", "content": render(template.answer, demo.fields)}]


def count_images(messages: Sequence[dict[str, Any]]) -> int:
    """Image parts in chat messages."""
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for part in m["content"] if isinstance(part, dict) and part.get("type") == "image_url")


def build_messages(
    template: PromptTemplate, demos: Sequence[DemoContent], query: DemoContent, *, max_images: int
) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if template.system:
        messages.append({"role": "system", "content": template.system})
    for demo in demos:
        messages.extend(demonstration_turns(template, demo))
    url = query.image_url() if template.include_images else None
    messages.append(_user_turn(_with_instruction(template, template.query_text, query.fields), url))
    if count_images(messages) > max_images:
        raise Incompatible(f"the prompt would hold more than {max_images} images; use a smaller window "
                           "or include_images=false", param="window")
    return messages
