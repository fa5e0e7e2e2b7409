"""CCI adapters in the core: applying trained weights with numpy, storing them with the version
they were trained on, and the service that trains one through the ``AdapterTrainer`` port."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from exemplar.errors import Conflict
from exemplar.retrieval.index.classes import ClassIndexes
from exemplar.retrieval.store.files import staged_dir

__all__ = [
    "Adapter",
    "AdapterMissing",
    "AdapterTrainer",
    "AdapterView",
    "TrainedAdapter",
    "load_adapter_weights",
    "remove_other_adapters",
    "write_adapter",
]

WEIGHTS = "weights.npz"
META = "adapter.json"


class AdapterMissing(Conflict):
    """``invariant`` asked of a version that has no adapter."""

    type = "adapter_missing"


@dataclasses.dataclass(frozen=True)
class Adapter:
    """A projection head as ``(W, b)`` layers with ReLU between them: ``h = relu(x W1 + b1) W2 + b2``."""

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def in_dim(self) -> int:
        return int(self.layers[0][0].shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.layers[-1][0].shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Map encoder-space vectors into the adapter space, L2-normalised, float32."""
        h = np.asarray(vectors, dtype=np.float32)
        for i, (W, b) in enumerate(self.layers):
            h = h @ W + b
            if i < len(self.layers) - 1:
                np.maximum(h, 0.0, out=h)
        norms = np.linalg.norm(h, axis=1, keepdims=True)
        return (h / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)

    def save(self, path: Path) -> None:
        arrays = {}
        for i, (W, b) in enumerate(self.layers):
            arrays[f"W{i}"], arrays[f"b{i}"] = W.astype(np.float32), b.astype(np.float32)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> "Adapter":
        with np.load(path, allow_pickle=False) as data:
            n = len(data.files) // 2
            return cls(tuple((data[f"W{i}"], data[f"b{i}"]) for i in range(n)))


@dataclasses.dataclass(frozen=True)
class TrainedAdapter:
    """What a trainer returns: the weights and what to record about the training."""

    adapter: Adapter
    info: dict[str, Any]


class AdapterTrainer(Protocol):
    def __call__(
        self,
        vectors: np.ndarray,
        labels: np.ndarray,
        domains: np.ndarray,
        params: dict[str, Any],
        *,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainedAdapter:
        """Train on ``vectors`` with integer ``labels`` (-1: none) and ``domains`` codes."""


@dataclasses.dataclass(frozen=True, eq=False)
class AdapterView:
    """A version's adapter with the pool's vectors mapped into its space and indexed there.

    A served version's view (``serving/loading.py``) carries ``classes``: each segment's class
    search in the adapter space, or an exact scan of its mapped adapter vectors. A view made over an
    in-memory matrix (an evaluation fold) leaves it None and gets exact per-class indexes on first use.
    """

    adapter_id: int
    adapter: Adapter
    vectors: Any  # the rows mapped into the adapter space: an array, or a view over segments
    index: Any  # VectorIndex-like, over ``vectors``
    info: dict[str, Any]
    classes: Any = None  # ClassSearch-like over ``vectors`` (global rows); None: built on first use
    _classes: list[ClassIndexes] = dataclasses.field(default_factory=list, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def class_search(self, label_codes: np.ndarray, n_labels: int) -> Any:  # noqa: ANN401 - ClassSearch-like
        """Per-label search in the adapter's space: ``classes`` when the view has it, else exact
        per-label indexes built on first use (a view belongs to one version, so its labels never
        change; only views over an in-memory matrix take this path)."""
        if self.classes is not None:
            return self.classes
        with self._lock:
            if not self._classes:
                self._classes.append(ClassIndexes.build(self.vectors, label_codes, n_labels, approximate=False))
            return self._classes[0]


def write_adapter(folder: Path, trained: TrainedAdapter) -> None:
    """Write an adapter's weights and what its training recorded, durably, at ``folder``
    (``<pool>/adapters/<id>``); its vectors live with each segment (``write_adapter_vectors``)."""
    try:
        with staged_dir(folder) as staging:
            trained.adapter.save(staging / WEIGHTS)
            (staging / META).write_text(json.dumps(trained.info))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def load_adapter_weights(candidates: Sequence[Path]) -> tuple[Adapter, dict[str, Any]]:
    """Weights and info from the first of ``candidates`` that holds them (a pool's adapters
    folder, or a version folder from before segments)."""
    for folder in candidates:
        if (folder / WEIGHTS).is_file():
            return Adapter.load(folder / WEIGHTS), json.loads((folder / META).read_text())
    raise FileNotFoundError(f"no adapter weights in {', '.join(map(str, candidates))}")


def remove_other_adapters(root: Path, keep: Sequence[int]) -> None:
    """Remove adapter folders under ``root`` (a pool's adapters folder, or a segment's) but ``keep``."""
    for child in root.iterdir() if root.is_dir() else ():
        if not child.name.isdigit() or int(child.name) not in keep:
            shutil.rmtree(child, ignore_errors=True)
