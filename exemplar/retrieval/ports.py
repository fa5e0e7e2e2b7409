"""What the core needs from the outside, declared here so the core never imports ``encoders``;
and what the store needs from serving, declared here so the store never imports serving code."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from exemplar.retrieval.serving.snapshot import Snapshot
    from exemplar.retrieval.store.segments import LoadedSegment

__all__ = ["CurrentVersions", "Encoder", "EncoderProvider", "SharedSegments"]


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


class CurrentVersions(Protocol):
    """The pools' current versions as this process serves them (``serving.cache.SnapshotCache``).
    A write is derived from the current version read fresh from the catalog; the store asks for it
    through this port, so that its write path runs no serving code of its own choosing."""

    def current(self, name: str, *, fresh: bool = False) -> Snapshot | None:
        """The pool's current version (None before its first write); ``fresh`` checks the catalog first."""


class SharedSegments(Protocol):
    """Loaded segments shared within a process (``serving.loading.SegmentCache``), so that upkeep
    reading a segment does not load a second copy of what serving already holds."""

    def get(self, pool_id: int, name: str, load: Callable[[], LoadedSegment]) -> LoadedSegment:
        """The segment, from the cache or by calling ``load`` once."""
