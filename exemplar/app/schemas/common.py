"""Wire types shared by several features."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated

from pydantic import BeforeValidator, ConfigDict, BaseModel, PlainSerializer, WithJsonSchema

__all__ = ["Base64Image", "StrictModel"]

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
    WithJsonSchema({"type": "string", "format": "byte", "description": "Image bytes as base64 or a data URI."}),
]


class StrictModel(BaseModel):
    """Request bodies refuse unknown fields, so a typo is an error rather than a silent default."""

    model_config = ConfigDict(extra="forbid")
