"""Centred pools: vectors stored less a mean, then normalised.

Encoders' embeddings are anisotropic (they share a large common direction: the sample pool's
images have a mean pairwise cosine of 0.986), so every item is close to every other and similarity
differences are small. A pool created with ``centre`` subtracts a mean vector before normalising,
at writes and at queries alike, so inner products compare what differs between items
(``docs/methods.md``, Centring).

The mean is fixed by the write that starts a lineage of versions (the pool's first write with rows,
or a build with mode ``replace``) from the vectors it writes, and kept by every version written on
top, so all rows of a version were centred by the same vector: each segment stores the mean its rows
were centred with (``centre.npy``), and serving centres queries by its version's. That first write
must hold at least ``MIN_CENTRE_ROWS`` items: a mean of a handful of items is mostly those items.
"""

from __future__ import annotations

import numpy as np

from exemplar.errors import Incompatible
from exemplar.retrieval.index.vectors import normalize

__all__ = ["CENTRE", "MIN_CENTRE_ROWS", "centred", "check_first_write", "first_centre"]

CENTRE = "centre.npy"
MIN_CENTRE_ROWS = 32


def check_first_write(pool: str, rows: int) -> None:
    """A write that fixes a centred pool's mean must bring enough rows for one."""
    if rows < MIN_CENTRE_ROWS:
        raise Incompatible(
            f"pool {pool!r} is centred, and its first write fixes the mean its vectors are centred by: write at "
            f"least {MIN_CENTRE_ROWS} items at once (this write has {rows}), e.g. with a build",
            param="items",
        )


def first_centre(vectors: np.ndarray, pool: str) -> np.ndarray:
    """The mean a lineage of versions is centred by, from the unit vectors of its first write."""
    check_first_write(pool, len(vectors))
    return np.asarray(vectors, np.float64).mean(axis=0).astype(np.float32)


def centred(vectors: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Unit rows of ``vectors - centre`` (a row equal to the mean stays zero: it scores 0 against all)."""
    return normalize(np.asarray(vectors, np.float32) - centre)
