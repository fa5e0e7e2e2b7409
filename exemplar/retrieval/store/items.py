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

from exemplar.errors import ExemplarError, Incompatible, InvalidImage, InvalidRequest, UnsupportedQuery
from exemplar.retrieval.ports import Encoder
from exemplar.retrieval.index.vectors import normalize
from exemplar.retrieval.store.catalog import ItemRow
from exemplar.retrieval.store.modalities import empty_vectors, stack_modalities

__all__ = [
    "EMBED_MODES",
    "ItemError",
    "NewItem",
    "DecodedItems",
    "FIELD_RULES",
    "FieldRule",
    "check_vector",
    "column_field_errors",
    "embed_items",
    "encode_prepared",
    "prepare_items",
    "image_extension",
    "item_row",
    "media_name",
    "unit_rows",
    "validate_item_fields",
    "width_message",
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
        cls = {"invalid_image": InvalidImage, "unsupported_query": UnsupportedQuery,
               "incompatible": Incompatible}.get(self.type, InvalidRequest)
        return cls(f"{param} ({self.item_id!r}): {self.message}", param=f"{param}.{self.field}")


NO_EMBEDDING = "precomputed pools need an 'embedding' per item"
NONFINITE = "embedding contains NaN or infinite values"
ZERO_LENGTH = "embedding has zero length"


def width_message(width: int, dim: int) -> str:
    return f"embedding has {width} dimensions, the pool expects {dim}"


def check_vector(values: Sequence[float] | np.ndarray, dim: int, *, param: str) -> np.ndarray:
    """A finite, non-zero float32 vector of width ``dim``, scaled to unit length."""
    vector = np.asarray(values, dtype=np.float64)
    if vector.ndim != 1:
        raise InvalidRequest("embedding must be a flat list of numbers", param=param)
    if vector.shape[0] != dim:
        # an empty list is malformed anywhere; another width only for this pool
        raise (Incompatible if len(vector) else InvalidRequest)(width_message(vector.shape[0], dim), param=param)
    # the arithmetic of a bulk build, so a vector gets the same bits whichever way it comes in
    units, problems = unit_rows(vector[None, :])
    if problems[0] is not None:
        raise InvalidRequest(problems[0], param=param)
    return units[0]


_UNIT_ROWS_STEP = 256


def unit_rows(matrix: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
    """``check_vector`` over each row of an ``(n, dim)`` matrix at once: the float32 unit vectors of
    the rows that pass, in order, and per row the message of its problem (None: it passed).

    Values are taken as float64 (float32 and integers widen exactly, as a JSON list of the same
    numbers would), and each row is divided by its largest magnitude before its norm is taken, so
    huge values do not overflow and tiny ones do not underflow.
    """
    x = np.asarray(matrix)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    n, dim = x.shape
    if dim == 0:
        return np.empty((0, 0), np.float32), [ZERO_LENGTH] * n
    # max |x| without an |x| temporary; NaN and inf carry through max and min
    peak = np.maximum(x.max(axis=1), -x.min(axis=1)).astype(np.float64)
    finite = np.isfinite(peak)
    good = finite & (peak != 0.0)
    problems: list[str | None] = [None] * n
    if not good.all():
        for i in np.flatnonzero(~good).tolist():
            problems[i] = ZERO_LENGTH if finite[i] else NONFINITE
        x, peak = x[good], peak[good]
    units = np.empty(x.shape, np.float32)
    # a few hundred rows at a time: the float64 temporaries stay in cache (2.5x faster than whole)
    for start in range(0, len(x), _UNIT_ROWS_STEP):
        part = slice(start, start + _UNIT_ROWS_STEP)
        scaled = x[part] / peak[part, None]  # float64, whatever x is
        # a pairwise sum per row: the same bits for a row alone or among thousands
        norms = np.sqrt(np.add.reduce(scaled * scaled, axis=1))
        np.divide(scaled, norms[:, None], out=scaled)
        units[part] = scaled
    return units, problems


_CONTROL_CLASS = r"[\x00-\x1f\x7f]"  # the same pattern in Python's re and Arrow's RE2
_CONTROL = re.compile(_CONTROL_CLASS)
_SURROGATE = "text is not valid Unicode (a lone surrogate)"


@dataclasses.dataclass(frozen=True)
class FieldRule:
    """One check of an item's fields. ``FIELD_RULES`` holds them in the order they apply, so an
    item's error is that of its first failing rule whether items are checked one at a time
    (``validate_item_fields``) or a column at a time (``column_field_errors``)."""

    field: str
    kind: Literal["unicode", "control", "length"]
    message: str
    low: int = 0
    high: int = 0
    required: bool = False  # a missing value fails

    def fails(self, value: Any) -> bool:  # noqa: ANN401 - any field's value
        if self.field == "metadata":
            # its size is counted as stored (ASCII JSON); a lone surrogate only shows unescaped
            value = json.dumps(value, ensure_ascii=self.kind != "unicode")
        if value is None:
            return self.required
        if self.kind == "unicode":
            # JSON can carry lone surrogates (\ud800) that no UTF-8 store or response can hold.
            if not isinstance(value, str):
                return False
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
            return False
        if self.kind == "control":
            return isinstance(value, str) and _CONTROL.search(value) is not None
        return not self.low <= len(value) <= self.high

    def fails_column(self, values: Any, undecodable: np.ndarray | None) -> np.ndarray:  # noqa: ANN401 - pyarrow array
        """``fails`` over an Arrow string array (null: no value). Valid UTF-8 cannot hold a lone
        surrogate, so the unicode rule fails exactly the values whose bytes were not UTF-8, which
        the reader found (``undecodable``) and made null."""
        import pyarrow.compute as pc

        if self.kind == "unicode":
            return undecodable if undecodable is not None else np.zeros(len(values), bool)
        if self.kind == "control":
            return pc.match_substring_regex(values, _CONTROL_CLASS).fill_null(False).to_numpy(zero_copy_only=False)
        # code points, as Python's len counts them
        lengths = pc.utf8_length(values).fill_null(-1).to_numpy(zero_copy_only=False)
        return np.where(lengths >= 0, (lengths < self.low) | (lengths > self.high), self.required)


# Identifiers end up in log lines, CSV exports and metrics: no NUL, newline or other control.
FIELD_RULES: tuple[FieldRule, ...] = (
    *(FieldRule(name, "unicode", _SURROGATE) for name in ("id", "label", "domain", "text", "image")),
    *(FieldRule(name, "control", f"{name} must not contain control characters (NUL, newlines, tabs...)")
      for name in ("id", "label", "domain")),
    FieldRule("metadata", "unicode", _SURROGATE),
    FieldRule("id", "length", f"item id must have 1 to {MAX_ID_CHARS} characters", 1, MAX_ID_CHARS, required=True),
    *(FieldRule(name, "length", f"{name} must have 1 to {MAX_ID_CHARS} characters", 1, MAX_ID_CHARS)
      for name in ("label", "domain")),
    FieldRule("text", "length", f"text is longer than {MAX_TEXT_CHARS} characters", 0, MAX_TEXT_CHARS),
    FieldRule("metadata", "length", f"metadata is larger than {MAX_METADATA_BYTES} bytes", 0, MAX_METADATA_BYTES),
)


def validate_item_fields(item: NewItem, *, param: str) -> None:
    for rule in FIELD_RULES:
        if rule.fails(getattr(item, rule.field)):
            raise InvalidRequest(rule.message, param=f"{param}.{rule.field}")


def column_field_errors(size: int, columns: dict[str, Any], *, undecodable: dict[str, np.ndarray] | None = None,
                        metadata: Sequence[dict[str, Any]] | None = None) -> dict[int, str]:
    """``validate_item_fields`` a column at a time: the rows that fail, each with the message of its
    first failing rule. ``columns`` maps fields to Arrow string arrays of ``size`` rows (null: no
    value; a field left out has no value in any row), ``undecodable`` fields to the rows whose
    bytes were not UTF-8, and ``metadata`` holds each row's metadata object."""
    first = np.full(size, -1, np.int64)
    for k, rule in enumerate(FIELD_RULES):
        if rule.field == "metadata":
            if metadata is None:
                continue
            failed = np.fromiter((bool(m) and rule.fails(m) for m in metadata), bool, size)
        elif rule.field in columns:
            failed = rule.fails_column(columns[rule.field], (undecodable or {}).get(rule.field))
        elif rule.required:
            failed = np.ones(size, bool)
        else:
            continue
        first[failed & (first < 0)] = k
    failed = np.flatnonzero(first >= 0)
    return {i: FIELD_RULES[k].message for i, k in zip(failed.tolist(), first[failed].tolist())}


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
            errors.append(ItemError(i, items[i].id, "incompatible", NO_EMBEDDING, "embedding"))
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
        return None, ItemError(-1, item.id, "incompatible", "this pool encodes its items; 'embedding' is only for precomputed pools", "embedding")
    if "text" in modalities and not item.text:
        return None, ItemError(-1, item.id, "incompatible", f"pools that embed {embed!r} need a 'text' per item", "text")
    if "image" not in modalities:
        return None, None
    if item.image_bytes is None and item.image is None:
        return None, ItemError(-1, item.id, "incompatible", f"pools that embed {embed!r} need an 'image' per item", "image")
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


def encode_prepared(encoder: Encoder, embed: str, items: Sequence[NewItem], prepared: DecodedItems) -> np.ndarray:
    """``(n, dim)`` unit rows; for ``image+text`` pools ``(n, 3, dim)``: the fused row (the mean
    direction of the two unit vectors) with the image and text vectors (``store/modalities.py``)."""
    modalities = _modalities(embed)
    if not prepared.kept:
        return empty_vectors(encoder.dim, embed)
    image = encoder.encode_preprocessed(prepared.images) if "image" in modalities else None
    text = encoder.encode_texts([items[i].text or "" for i in prepared.kept]) if "text" in modalities else None
    if image is not None and text is not None:
        return stack_modalities(image, text)
    single = image if image is not None else text
    assert single is not None  # EMBED_MODES name at least one modality
    return normalize(single)


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
    matrix = np.concatenate(parts) if parts else empty_vectors(encoder.dim, embed, precomputed=precomputed)
    return matrix, kept, errors


def item_row(item: NewItem) -> ItemRow:
    """The catalog row for a new item (its uid is assigned when the version is written)."""
    return ItemRow(
        uid=-1,
        item_id=item.id,
        label=item.label,
        text=item.text,
        image=item.image,
        media_root=item.media_root,
        domain=item.domain,
        metadata=json.dumps(item.metadata) if item.metadata else None,
    )
