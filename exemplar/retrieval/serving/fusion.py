"""Modality weighting (``fusion``): selection by ``w_image * cos(image) + w_text * cos(text)``.

An ``image+text`` pool keeps each item's image and text vectors side by side
(``store/modalities.py``). A request that weights them is served from a view of the version in which
every row is ``[sqrt(w_image) * x_image, sqrt(w_text) * x_text]`` and every query
``[sqrt(w_image) * q_image, sqrt(w_text) * q_text]``: their inner product is the weighted sum of the
two cosines (VideoICL's alpha-weighted similarity), and since the weights sum to 1 both are unit
vectors, so the strategies, the shared mean, MMR's item-to-item similarity and the reported
``score`` all work unchanged on that view. The searches scan the stored rows exactly (the weights
are per request, so no index is built for them); the view scales the queries instead of the rows.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from exemplar.errors import EmptyPool, Incompatible, InvalidRequest
from exemplar.retrieval.index.vectors import TUNED, Effort, normalize

if TYPE_CHECKING:
    from exemplar.retrieval.serving.snapshot import Snapshot

__all__ = ["ModalityVectors", "ScaledClasses", "ScaledRows", "ScaledSearch", "block_scale", "check_fusion",
           "fused_queries"]


def block_scale(dim: int, weights: tuple[float, float]) -> np.ndarray:
    """``[sqrt(w_image)] * dim + [sqrt(w_text)] * dim``: a row or query of the view, from the stored one."""
    return np.concatenate([np.full(dim, math.sqrt(weights[0]), np.float32),
                           np.full(dim, math.sqrt(weights[1]), np.float32)])


class ScaledRows:
    """Rows of the stored ``(n, 2 * dim)`` matrix, scaled on reading."""

    def __init__(self, vectors: Any, scale: np.ndarray) -> None:  # noqa: ANN401 - an array or a segmented view
        self.base = vectors
        self.scale = scale
        self.shape = vectors.shape
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, key: Any) -> np.ndarray:  # noqa: ANN401 - an int, a slice, or rows
        return np.asarray(self.base[key], dtype=np.float32) * self.scale

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:  # noqa: ANN401 - numpy protocol
        out = np.asarray(self.base, dtype=np.float32) * self.scale
        return out if dtype is None else out.astype(dtype, copy=False)


class ScaledSearch:
    """An index over the stored rows searched with scaled queries: the view's scores."""

    def __init__(self, index: Any, scale: np.ndarray) -> None:  # noqa: ANN401 - an exact or segmented index
        self.index = index
        self.scale = scale
        self.exact = True
        self.factory = "Flat"
        self.params: dict[str, int] = {}

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, effort: Effort = TUNED
               ) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.asarray(queries, np.float32) * self.scale, k, allowed, effort)


class ScaledClasses:
    """Per-class search (what ``balanced`` uses) over the stored rows, with scaled queries; the class
    lists are built on first use (``topk`` and ``random`` never need them)."""

    def __init__(self, classes: Callable[[], Any], scale: np.ndarray) -> None:  # returns a SegmentedClasses
        self._classes = classes
        self.scale = scale
        self.approximate: list[int] = []

    @property
    def rows(self) -> list[np.ndarray]:
        return self._classes().rows

    @property
    def stats(self) -> dict[str, Any]:
        return self._classes().stats

    def search(self, code: int, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               effort: Effort = TUNED) -> tuple[np.ndarray, np.ndarray]:
        return self._classes().search(code, np.asarray(queries, np.float32) * self.scale, k, allowed, effort)

    def search_many(self, codes: Sequence[int], queries: np.ndarray, k: int,
                    allowed: Mapping[int, np.ndarray] | None = None, *, needed: int | None = None,
                    effort: Effort = TUNED) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return self._classes().search_many(codes, np.asarray(queries, np.float32) * self.scale, k, allowed,
                                           needed=needed, effort=effort)


@dataclasses.dataclass(frozen=True, eq=False)
class ModalityVectors:
    """A version's image and text vectors, ``(n, 2 * dim)`` over its live rows, searched exactly.
    The per-class search is built on first use: most requests never weight the modalities."""

    vectors: Any  # an array or a SegmentedVectors
    index: Any  # an ExactIndex or a SegmentedIndex of them
    dim: int  # the width of one modality
    make_classes: Callable[[], Any]

    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)
    _classes: Any = dataclasses.field(default=None, repr=False)

    @property
    def classes(self) -> Any:  # noqa: ANN401 - a SegmentedClasses
        with self._lock:  # built once, even when two first requests come together
            if self._classes is None:
                object.__setattr__(self, "_classes", self.make_classes())
            return self._classes

    def weighted(self, weights: tuple[float, float]) -> tuple[ScaledRows, ScaledSearch, ScaledClasses]:
        """The view's vectors, index and class search for these weights (they sum to 1)."""
        scale = block_scale(self.dim, weights)
        return (ScaledRows(self.vectors, scale), ScaledSearch(self.index, scale),
                ScaledClasses(lambda: self.classes, scale))


def check_fusion(snap: Snapshot) -> None:
    if snap.modalities is None and snap.size == 0:
        raise EmptyPool(f"version {snap.version} of pool {snap.pool!r} holds no items", param="pool")
    if snap.modalities is None:
        raise Incompatible(
            f"version {snap.version} of pool {snap.pool!r} keeps one vector per item: fusion weighs the image and "
            "text vectors that pools created with embed 'image+text' keep (items written before Exemplar kept "
            "them need writing again: a build with mode 'replace')",
            param="fusion",
        )


def fused_queries(snap: Snapshot, self_rows: Sequence[int | None], image_at: Sequence[int],
                  image_vectors: np.ndarray | None, text_at: Sequence[int], text_vectors: np.ndarray | None,
                  fusion: tuple[float, float], param: Callable[[int], str]) -> tuple[np.ndarray, tuple[float, float]]:
    """The queries in the fused view and the weights used: ``fusion`` where the queries have both
    modalities (an image with a text, or a stored item), all on one modality where they have one.
    ``image_at`` / ``text_at``: which queries the encoded vectors belong to; ``param`` names a query."""
    modalities = snap.modalities
    assert modalities is not None  # check_fusion ran first
    n, dim = len(self_rows), modalities.dim
    image, text = np.zeros((n, dim), np.float32), np.zeros((n, dim), np.float32)
    has_image, has_text = np.zeros(n, bool), np.zeros(n, bool)
    if image_vectors is not None:
        image[list(image_at)], has_image[list(image_at)] = image_vectors, True
    if text_vectors is not None:
        text[list(text_at)], has_text[list(text_at)] = text_vectors, True
    items = [(i, row) for i, row in enumerate(self_rows) if row is not None]
    if items:
        stored = np.asarray(modalities.vectors[[row for _, row in items]], np.float32)
        at = [i for i, _ in items]
        image[at], text[at] = stored[:, :dim], stored[:, dim:]
        has_image[at] = has_text[at] = True
    kinds = list(zip(has_image.tolist(), has_text.tolist()))
    differs = next((i for i, kind in enumerate(kinds) if kind != kinds[0]), None)
    if differs is not None:
        raise InvalidRequest("fusion weighs every query of a batch alike: give them all the same modalities as the "
                             "first (an image with a text or an item_id; an image alone; a text alone)",
                             param=param(differs))
    with_image, with_text = kinds[0]
    weights = fusion if with_image and with_text else (1.0, 0.0) if with_image else (0.0, 1.0)
    return np.hstack([normalize(image), normalize(text)]) * block_scale(dim, weights), weights
