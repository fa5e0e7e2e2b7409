"""Both modality vectors of an ``image+text`` pool, kept beside the fused vector it searches by.

An ``image+text`` pool searches one vector per item, the normalised mean of its image and text
vectors. Requests that weight the modalities (``fusion``) need the two vectors themselves, so the
encoder's output travels from encoding to the store as an ``(n, 3, dim)`` array (fused, image,
text): through API writes, build shards and Ray batches alike, without a second argument on every
path. The store splits it (``split_vectors``): the fused rows become ``vectors.npy`` and the two
modality vectors, side by side, ``modalities.npy`` (``(n, 2 * dim)``: image then text), so a
weighted score is one product with ``[w_image * q_image, w_text * q_text]``.
"""

from __future__ import annotations

import numpy as np

from exemplar.retrieval.index.vectors import normalize

__all__ = ["MODALITIES", "empty_vectors", "split_vectors", "stack_modalities", "stacks_modalities"]

MODALITIES = ("image", "text")


def stacks_modalities(embed: str, *, precomputed: bool = False) -> bool:
    """Whether a pool that embeds ``embed`` keeps both modality vectors (a precomputed pool is given
    one vector per item, whatever it says it embeds)."""
    return not precomputed and set(embed.split("+")) == set(MODALITIES)


def stack_modalities(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """``(n, 3, dim)``: the fused vector (normalised mean direction), the image and the text vector."""
    image = np.asarray(image, np.float32)
    text = np.asarray(text, np.float32)
    return np.stack([normalize(image + text), normalize(image), normalize(text)], axis=1)


def empty_vectors(dim: int, embed: str, *, precomputed: bool = False) -> np.ndarray:
    """No rows, in the shape the pool's encoded vectors have."""
    shape = (0, len(MODALITIES) + 1, dim) if stacks_modalities(embed, precomputed=precomputed) else (0, dim)
    return np.empty(shape, np.float32)


def split_vectors(vectors: np.ndarray, dim: int, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows to search by, ``(n, dim)``, and the modality vectors, ``(n, 2, dim)`` (image, text; a
    view of ``vectors``, not a copy: ``files.save_rows`` writes it as ``(n, 2 * dim)``); None where the
    vectors carry one space only (one modality, or precomputed vectors)."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 3:
        if array.shape[1:] != (len(MODALITIES) + 1, dim):
            raise ValueError(f"stacked vectors of shape {array.shape} for width {dim}")
        return np.ascontiguousarray(array[:, 0]), array[:, 1:]
    return np.ascontiguousarray(array).reshape(n, dim), None
