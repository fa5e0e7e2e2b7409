"""``precomputed:<dim>``: the caller supplies vectors; nothing is encoded here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from exemplar.errors import UnsupportedQuery

__all__ = ["PrecomputedEncoder"]

_MESSAGE = "the pool stores precomputed vectors ({spec}): give an 'embedding' (or an 'item_id') instead of {what}"


class PrecomputedEncoder:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.spec = f"precomputed:{dim}"

    def preprocess_image(self, data: bytes) -> object:
        raise UnsupportedQuery(_MESSAGE.format(spec=self.spec, what="an image"), param="image")

    def encode_preprocessed(self, batch: Sequence[object]) -> np.ndarray:
        raise UnsupportedQuery(_MESSAGE.format(spec=self.spec, what="an image"), param="image")

    def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        raise UnsupportedQuery(_MESSAGE.format(spec=self.spec, what="an image"), param="image")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise UnsupportedQuery(_MESSAGE.format(spec=self.spec, what="text"), param="text")
