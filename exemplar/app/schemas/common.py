"""Wire types shared by several features."""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator, ConfigDict, BaseModel, PlainSerializer, WithJsonSchema, model_validator

from exemplar.retrieval.serving.strategies import list_strategies
from exemplar.retrieval.serving.strategies.base import integral_numbers

__all__ = [
    "Base64Image", "Base64Vector", "IDENTIFIER", "INDEX_FACTORY", "MAX_VECTOR", "NON_BLANK", "NON_ZERO_VECTOR",
    "StrictModel", "limit", "rules", "strategy_names",
]

# Patterns the document states for rules the server checks itself, with its own messages: the
# domain stays the one place that enforces them, the document says what it will accept.
# Identifiers (ids, labels, domains) end up in logs, CSV exports and metrics: no control characters.
# Said as "no match" rather than an anchored pattern: '$' also matches before a final newline in
# Python's dialect, and the newline is what must not pass.
IDENTIFIER: dict[str, Any] = {"not": {"type": "string", "pattern": r"[\u0000-\u001f\u007f]"}}
# At least one character that str.strip() keeps: Python's whitespace, spelled out, since JSON
# Schema's \s is ECMAScript's and differs (U+001C..U+001F, U+0085, U+FEFF).
NON_BLANK = (r"[^\t\n\u000b\u000c\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f"
             r"\u3000]")
# A vector with a direction: not empty, not all zeros. ("contains" a non-zero number says the same,
# but makes schemathesis draw a vector of the maximum width item by item.)
NON_ZERO_VECTOR: dict[str, Any] = {"minItems": 1, "not": {"type": "array", "items": {"const": 0}}}

_M = r"(?:[4-9]|[1-5][0-9]|6[0-4])"  # HNSW links per node
_CODE = r"(?:Flat|SQ8|SQfp16)"
# The faiss factory strings documented as accepted for any encoder width: exact, scalar-quantised,
# HNSW and IVF (an IVF index also needs at least as many vectors as lists when it is built). faiss
# parses more (PQ, OPQ, PCA...), fitting some widths only; those are accepted too, undocumented.
INDEX_FACTORY = rf"^(?:auto|{_CODE}|HNSW{_M}(?:,{_CODE})?|IVF[1-9][0-9]{{0,4}}(?:_HNSW{_M})?,{_CODE})$"


def limit(keyword: str, name: str) -> dict[str, str]:
    """A bound the server takes from its settings (``max_k``, ``max_queries``...): the document
    generator (``exemplar.app.openapi``) writes this server's value as ``keyword``."""
    return {f"x-{keyword}": name}


def rules(*conditions: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A model's ``json_schema_extra`` for rules across its fields (JSON Schema ``allOf``). Copied
    each time: pydantic merges these dicts into the document by reference, and the document
    generator fills in the limits in place."""

    def extend(schema: dict[str, Any]) -> None:
        schema.setdefault("allOf", []).extend(copy.deepcopy(conditions))

    return extend


def strategy_names(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` of a strategy field: the registered strategies, read when the document
    is written (the registry is filled on import)."""
    schema["enum"] = list_strategies()


_DATA_URI = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)


def _decode_base64(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("image must be a base64 string or a data URI")
    text = _DATA_URI.sub("", value, count=1).strip()
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("image is not valid base64") from None
    if not data:
        raise ValueError("image is empty")
    return data


Base64Image = Annotated[
    bytes,
    BeforeValidator(_decode_base64),
    PlainSerializer(lambda data: base64.b64encode(data).decode(), return_type=str),
    WithJsonSchema({"type": "string", "format": "byte", "minLength": 1,
                    "description": "Image bytes as base64 or a data URI."}),
]


MAX_VECTOR = 16384  # values in a query vector, either form
_MAX_VECTOR_BASE64 = 4 * -(-4 * MAX_VECTOR // 3)  # characters of MAX_VECTOR float32 values in base64
# Base64 text of a whole number of 4-byte values: groups of 3 values (16 characters), then 1 value
# (6 characters and '==') or 2 (11 characters and '='). Whether they are finite and not all zero
# is checked on decoding, not stated here.
_FLOAT32_BASE64 = r"^(?:[A-Za-z0-9+/]{16})*(?:[A-Za-z0-9+/]{6}==|[A-Za-z0-9+/]{11}=)?$"


def _decode_vector(value: object) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, str):
        raise ValueError("embedding_b64 must be a string: base64 of little-endian float32 values")
    if len(value) > _MAX_VECTOR_BASE64:
        raise ValueError(f"embedding_b64 holds more than {MAX_VECTOR} values")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("embedding_b64 is not valid base64") from None
    if not data:
        raise ValueError("embedding_b64 is empty")
    if len(data) % 4:
        raise ValueError(f"embedding_b64 must decode to little-endian float32 values, 4 bytes each; got {len(data)} "
                         "bytes")
    vector = np.frombuffer(data, dtype="<f4")
    if not np.isfinite(vector).all():
        raise ValueError("embedding_b64 contains NaN or infinite values")
    if not vector.any():
        raise ValueError("embedding_b64 has zero length: every value is 0")
    return vector


def _encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


# A query vector as base64 of its little-endian float32 bytes: about a quarter of the size of the
# JSON list, and decoded without a Python float per value. Validated into a read-only float32 array.
Base64Vector = Annotated[
    Any,
    BeforeValidator(_decode_vector),
    PlainSerializer(_encode_vector, return_type=str),
    WithJsonSchema({"type": "string", "minLength": 8, "maxLength": _MAX_VECTOR_BASE64,
                    "pattern": _FLOAT32_BASE64}),
]


class StrictModel(BaseModel):
    """Request bodies refuse unknown fields, so a typo is an error rather than a silent default, and
    values of another JSON type ("8" or true for 8), so a value the document calls invalid is."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:  # noqa: ANN401 - the parsed JSON
        return integral_numbers(cls, data)
