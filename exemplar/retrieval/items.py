"""New items: validation and embedding with the pool's encoder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Literal

import numpy as np

from exemplar.errors import ExemplarError, InvalidImage, InvalidRequest, UnsupportedQuery
from exemplar.retrieval.ports import Encoder

__all__ = [
    "EMBED_MODES",
    "ItemError",
    "NewItem",
    "DecodedItems",
    "check_vector",
    "embed_items",
    "encode_prepared",
    "prepare_items",
    "image_extension",
    "media_name",
    "validate_item_fields",
]

EmbedMode = Literal["image", "text", "image+text"]
EMBED_MODES: tuple[str, ...] = ("image", "text", "image+text")
MAX_ID_CHARS = 512
MAX_TEXT_CHARS = 20_000
MAX_METADATA_BYTES = 64 * 1024


@dataclasses.dataclass
class NewItem:
    id: str
    label: str | None = None
    text: str | None = None
    domain: str | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    image_bytes: bytes | None = None
    image: str | None = None  # reference stored with the item
    media_root: str | None = None  # None: the pool's own media folder
    embedding: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class ItemError:
    """Why one item was rejected; ``field`` names the offending item field."""

    index: int
    item_id: str | None
    type: str
    message: str
    field: str

    def to_exception(self, param: str) -> ExemplarError:
        cls = {"invalid_image": InvalidImage, "unsupported_query": UnsupportedQuery}.get(self.type, InvalidRequest)
        return cls(f"{param} ({self.item_id!r}): {self.message}", param=f"{param}.{self.field}")


def check_vector(values: Sequence[float] | np.ndarray, dim: int, *, param: str) -> np.ndarray:
    """A finite, non-zero float32 vector of width ``dim``, scaled to unit length."""
    vector = np.asarray(values, dtype=np.float64)
    if vector.ndim != 1:
        raise InvalidRequest("embedding must be a flat list of numbers", param=param)
    if vector.shape[0] != dim:
        raise InvalidRequest(f"embedding has {vector.shape[0]} dimensions, the pool expects {dim}", param=param)
    if not np.all(np.isfinite(vector)):
        raise InvalidRequest("embedding contains NaN or infinite values", param=param)
    peak = float(np.max(np.abs(vector))) if len(vector) else 0.0
    if peak == 0.0:
        raise InvalidRequest("embedding has zero length", param=param)
    vector = vector / peak  # first to the unit cube: no overflow for huge values, no underflow for tiny ones
    return (vector / np.linalg.norm(vector)).astype(np.float32)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_unicode(value: str, param: str) -> None:
    # JSON can carry lone surrogates (\ud800) that no UTF-8 store or response can hold.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("text is not valid Unicode (a lone surrogate)", param=param) from None


def validate_item_fields(item: NewItem, *, param: str) -> None:
    for name in ("id", "label", "domain", "text", "image"):
        value = getattr(item, name)
        if isinstance(value, str):
            _check_unicode(value, f"{param}.{name}")
    for name in ("id", "label", "domain"):
        value = getattr(item, name)
        # Identifiers end up in log lines, CSV exports and metrics: no NUL, newline or other control.
        if isinstance(value, str) and _CONTROL.search(value):
            raise InvalidRequest(f"{name} must not contain control characters (NUL, newlines, tabs...)",
                                 param=f"{param}.{name}")
    _check_unicode(json.dumps(item.metadata, ensure_ascii=False), f"{param}.metadata")
    if not item.id or len(item.id) > MAX_ID_CHARS:
        raise InvalidRequest(f"item id must have 1 to {MAX_ID_CHARS} characters", param=f"{param}.id")
    for name in ("label", "domain"):
        value = getattr(item, name)
        if value is not None and (not value or len(value) > MAX_ID_CHARS):
            raise InvalidRequest(f"{name} must have 1 to {MAX_ID_CHARS} characters", param=f"{param}.{name}")
    if item.text is not None and len(item.text) > MAX_TEXT_CHARS:
        raise InvalidRequest(f"text is longer than {MAX_TEXT_CHARS} characters", param=f"{param}.text")
    if len(json.dumps(item.metadata)) > MAX_METADATA_BYTES:
        raise InvalidRequest(f"metadata is larger than {MAX_METADATA_BYTES} bytes", param=f"{param}.metadata")


# (leading bytes, file extension, media type) of the image formats recognised by their content
_SIGNATURES = (
    (b"\x89PNG", "png", "image/png"),
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"GIF8", "gif", "image/gif"),
    (b"BM", "bmp", "image/bmp"),
)


def sniff_image(data: bytes) -> tuple[str, str] | None:
    """``(extension, media type)`` of image bytes, from their content; None when not recognised."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    for magic, ext, mime in _SIGNATURES:
        if data.startswith(magic):
            return ext, mime
    return None


def image_extension(data: bytes) -> str:
    sniffed = sniff_image(data)
    return sniffed[0] if sniffed else "img"


def media_name(data: bytes) -> str:
    """Content-addressed name for an uploaded image, relative to the pool's media folder."""
    digest = hashlib.sha256(data).hexdigest()
    return f"{digest[:2]}/{digest}.{image_extension(data)}"


def _read_image(item: NewItem) -> bytes:
    if item.image_bytes is not None:
        return item.image_bytes
    if item.image is None or item.media_root is None:
        raise InvalidRequest("item has no image", param="image")
    return (Path(item.media_root) / item.image).read_bytes()


def _modalities(embed: str) -> set[str]:
    return set(embed.split("+"))


def _message(exc: Exception) -> str:
    if isinstance(exc, ExemplarError):
        return exc.message
    if isinstance(exc, FileNotFoundError):
        return "image file not found"
    return f"cannot read image file ({type(exc).__name__})"


def _embed_precomputed(dim: int, items: Sequence[NewItem], chunk: range, errors: list[ItemError]) -> tuple[list[int], np.ndarray]:
    kept, rows = [], []
    for i in chunk:
        if items[i].embedding is None:
            errors.append(ItemError(i, items[i].id, "invalid_request", "precomputed pools need an 'embedding' per item", "embedding"))
            continue
        try:
            rows.append(check_vector(items[i].embedding, dim, param="embedding"))
        except InvalidRequest as exc:
            errors.append(ItemError(i, items[i].id, exc.type, exc.message, "embedding"))
            continue
        kept.append(i)
    return kept, np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)


@dataclasses.dataclass
class DecodedItems:
    """Items checked and decoded, ready for the encoder: ``kept`` indices and their decoded images."""

    kept: list[int]
    images: list[object]


def _prepare_one(encoder: Encoder, embed: str, item: NewItem) -> tuple[object | None, ItemError | None]:
    modalities = _modalities(embed)
    if item.embedding is not None:
        return None, ItemError(-1, item.id, "invalid_request", "this pool encodes its items; 'embedding' is only for precomputed pools", "embedding")
    if "text" in modalities and not item.text:
        return None, ItemError(-1, item.id, "invalid_request", f"pools that embed {embed!r} need a 'text' per item", "text")
    if "image" not in modalities:
        return None, None
    if item.image_bytes is None and item.image is None:
        return None, ItemError(-1, item.id, "invalid_request", f"pools that embed {embed!r} need an 'image' per item", "image")
    try:
        return encoder.preprocess_image(_read_image(item)), None
    except (ExemplarError, OSError) as exc:
        kind = exc.type if isinstance(exc, ExemplarError) else "invalid_image"
        return None, ItemError(-1, item.id, kind, _message(exc), "image")


def prepare_items(
    encoder: Encoder, embed: str, items: Sequence[NewItem], chunk: range, errors: list[ItemError],
    pool: Executor | None = None,
) -> DecodedItems:
    """Check and decode ``items[chunk]`` (in parallel on ``pool`` when given); errors are appended."""
    work = [items[i] for i in chunk]
    results = list(pool.map(lambda item: _prepare_one(encoder, embed, item), work)) if pool else [
        _prepare_one(encoder, embed, item) for item in work
    ]
    kept, images = [], []
    for i, (image, error) in zip(chunk, results):
        if error is not None:
            errors.append(dataclasses.replace(error, index=i))
            continue
        kept.append(i)
        if image is not None:
            images.append(image)
    return DecodedItems(kept, images)


def encode_prepared(encoder: Encoder, embed: str, items: Sequence[NewItem], prepared: Prepared) -> np.ndarray:
    modalities = _modalities(embed)
    if not prepared.kept:
        return np.empty((0, encoder.dim), np.float32)
    combined = np.zeros((len(prepared.kept), encoder.dim), np.float32)
    if "image" in modalities:
        combined += encoder.encode_preprocessed(prepared.images)
    if "text" in modalities:
        combined += encoder.encode_texts([items[i].text or "" for i in prepared.kept])
    # image+text: the mean direction of the two unit vectors.
    norms = np.linalg.norm(combined, axis=1, keepdims=True)
    return (combined / np.maximum(norms, 1e-12)).astype(np.float32)


def embed_items(
    encoder: Encoder,
    embed: str,
    items: Sequence[NewItem],
    *,
    precomputed: bool,
    batch_size: int = 256,
    pool: Executor | None = None,
) -> tuple[np.ndarray, list[int], list[ItemError]]:
    """Embed ``items``; returns ``(vectors, kept indices, errors)``, one error per rejected item.

    Vectors are in the order of the kept indices, which ascend.
    """
    errors: list[ItemError] = []
    kept: list[int] = []
    parts: list[np.ndarray] = []
    for start in range(0, len(items), batch_size):
        chunk = range(start, min(start + batch_size, len(items)))
        if precomputed:
            chunk_kept, vectors = _embed_precomputed(encoder.dim, items, chunk, errors)
        else:
            prepared = prepare_items(encoder, embed, items, chunk, errors, pool)
            chunk_kept, vectors = prepared.kept, encode_prepared(encoder, embed, items, prepared)
        kept.extend(chunk_kept)
        parts.append(vectors)
    matrix = np.concatenate(parts) if parts else np.empty((0, encoder.dim), np.float32)
    return matrix, kept, errors
