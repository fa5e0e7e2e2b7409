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
from exemplar.retrieval.class_index import ClassIndexes
from exemplar.retrieval.files import publish_dir
from exemplar.retrieval.index import VectorIndex

__all__ = ["Adapter", "AdapterMissing", "AdapterTrainer", "AdapterView", "TrainedAdapter", "load_adapter_view", "write_adapter"]

WEIGHTS = "weights.npz"
META = "adapter.json"
VECTORS = "vectors.npy"
INDEX = "index.faiss"


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
    """A version's adapter with the pool's vectors mapped into its space and indexed there."""

    adapter_id: int
    adapter: Adapter
    vectors: np.ndarray
    index: VectorIndex
    info: dict[str, Any]
    _classes: list[ClassIndexes] = dataclasses.field(default_factory=list, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def class_indexes(self, label_codes: np.ndarray, n_labels: int) -> ClassIndexes:
        """Exact per-label indexes in the adapter's space, built on first use (a view belongs to one
        version, so its labels never change)."""
        with self._lock:
            if not self._classes:
                self._classes.append(ClassIndexes.build(self.vectors, label_codes, n_labels, approximate=False))
            return self._classes[0]


def adapter_dir(version_dir: Path, adapter_id: int) -> Path:
    return version_dir / "adapters" / str(adapter_id)


def write_adapter(version_dir: Path, adapter_id: int, trained: TrainedAdapter, vectors: np.ndarray) -> None:
    """Write weights, adapted vectors and their index durably under ``adapters/<id>``."""
    final = adapter_dir(version_dir, adapter_id)
    staging = final.with_name(f".staging-{adapter_id}")
    try:
        staging.mkdir(parents=True, exist_ok=True)
        adapted = trained.adapter.apply(vectors) if len(vectors) else np.empty((0, trained.adapter.out_dim), np.float32)
        trained.adapter.save(staging / WEIGHTS)
        np.save(staging / VECTORS, adapted, allow_pickle=False)
        VectorIndex.build(adapted, "Flat").save(staging / INDEX)
        (staging / META).write_text(json.dumps(trained.info))
        publish_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        raise


def load_adapter_view(version_dir: Path, adapter_id: int) -> AdapterView:
    folder = adapter_dir(version_dir, adapter_id)
    return AdapterView(
        adapter_id=adapter_id,
        adapter=Adapter.load(folder / WEIGHTS),
        vectors=np.load(folder / VECTORS, allow_pickle=False),
        index=VectorIndex.load(folder / INDEX, "Flat"),
        info=json.loads((folder / META).read_text()),
    )


def remove_other_adapters(version_dir: Path, keep: Sequence[int]) -> None:
    root = version_dir / "adapters"
    for child in root.iterdir() if root.is_dir() else ():
        if not child.name.isdigit() or int(child.name) not in keep:
            shutil.rmtree(child, ignore_errors=True)
