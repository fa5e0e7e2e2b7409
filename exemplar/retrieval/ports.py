"""What the core needs from the outside, declared here so the core never imports ``encoders``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Encoder", "EncoderProvider"]


@runtime_checkable
class Encoder(Protocol):
    """Maps images and texts into one L2-normalised float32 space of width ``dim``."""

    spec: str
    dim: int

    def preprocess_image(self, data: bytes) -> object:
        """Decode and transform one image; raises ``exemplar.errors.InvalidImage`` for bad bytes."""

    def encode_preprocessed(self, batch: Sequence[object]) -> np.ndarray:
        """Encode what ``preprocess_image`` returned, as an ``(n, dim)`` float32 array."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts as an ``(n, dim)`` float32 array."""


EncoderProvider = Callable[[str], Encoder]
"""Returns the (shared) encoder for a spec string; raises ``EncoderUnavailable`` or ``InvalidRequest``."""
