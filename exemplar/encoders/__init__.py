"""Encoders: open_clip models (any architecture and weights), precomputed vectors, image decoding.

No FAISS and no FastAPI here; ``retrieval`` reaches encoders only through its ``Encoder`` port.
Importing this package does not import torch or open_clip: ``OpenClipEncoder`` is loaded on
first access, and ``load_encoder`` imports it only for an ``open_clip:`` spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exemplar.encoders.images import DEFAULT_MAX_PIXELS, decode_image
from exemplar.encoders.precomputed import PrecomputedEncoder
from exemplar.encoders.registry import EncoderRegistry, list_encoders, load_encoder
from exemplar.encoders.spec import TINY_ARCH, EncoderSpec, parse_spec

if TYPE_CHECKING:
    from exemplar.encoders.open_clip_encoder import OpenClipEncoder

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "TINY_ARCH",
    "EncoderRegistry",
    "EncoderSpec",
    "OpenClipEncoder",
    "PrecomputedEncoder",
    "decode_image",
    "list_encoders",
    "load_encoder",
    "parse_spec",
]


def __getattr__(name: str) -> object:
    # PEP 562: the public name stays importable while torch is imported only by those who use it.
    if name == "OpenClipEncoder":
        from exemplar.encoders.open_clip_encoder import OpenClipEncoder

        globals()[name] = OpenClipEncoder
        return OpenClipEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
