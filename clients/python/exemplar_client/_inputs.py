"""Turning what callers have (paths, bytes, PIL images, numpy arrays) into what the wire takes.

Neither PIL nor numpy is a dependency: objects are recognised by what they can do (``save``,
``tolist``), so a caller without them pays nothing."""

from __future__ import annotations

import base64
import io
import os
from typing import Any, List

__all__ = ["encode_image", "to_float_list"]


def _image_bytes(value: Any) -> bytes:  # noqa: ANN401 - any of the accepted forms
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (str, os.PathLike)):
        with open(value, "rb") as f:
            return f.read()
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image
        out = io.BytesIO()
        # PNG is lossless and takes every PIL mode the server can decode.
        value.save(out, format="PNG")
        return out.getvalue()
    raise ValueError(f"an image must be a file path, bytes or a PIL image, not {type(value).__name__}")


def encode_image(value: Any) -> Any:  # noqa: ANN401 - any of the accepted forms
    """A file path (``str`` or ``os.PathLike``), bytes or PIL image as base64 text; None stays None.

    A ``str`` is always a path: base64 text is ambiguous with a file name, so raw data goes as bytes."""
    if value is None:
        return None
    data = _image_bytes(value)
    if not data:
        raise ValueError("the image is empty")
    return base64.b64encode(data).decode("ascii")


def to_float_list(value: Any) -> Any:  # noqa: ANN401 - a sequence of numbers or an array
    """A vector as a list of floats: numpy arrays (anything with ``tolist``) or any sequence."""
    if value is None:
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (str, bytes)):
        raise ValueError("a vector must be a sequence of numbers")
    vector: List[float] = [float(x) for x in value]
    return vector
