"""Encoders: open_clip models (any architecture and weights), precomputed vectors, image decoding.

No FAISS and no FastAPI here; ``retrieval`` reaches encoders only through its ``Encoder`` port.
"""

from exemplar.encoders.images import DEFAULT_MAX_PIXELS, decode_image
from exemplar.encoders.open_clip_encoder import TINY_ARCH, OpenClipEncoder
from exemplar.encoders.precomputed import PrecomputedEncoder
from exemplar.encoders.registry import EncoderRegistry, list_encoders, load_encoder
from exemplar.encoders.spec import EncoderSpec, parse_spec

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
