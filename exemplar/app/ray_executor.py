"""The build's encode stage on Ray Data: ``map_batches`` over stateful encoder actors (GPUs when
asked), results gathered back into the build's shards.

Local: ``EXEMPLAR_EXECUTOR=ray`` starts a Ray instance in this process. A cluster:
``EXEMPLAR_RAY_ADDRESS=auto`` (or ``ray://head:10001``) and the same Exemplar version installed on
every node; image paths must be readable from the workers (a shared file system or object-store
mount), while images carried inside Parquet or WebDataset sources travel with the data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import numpy as np

from exemplar.retrieval import BuildSpec, NewItem
from exemplar.retrieval.store.items import ItemError
from exemplar.retrieval.store.modalities import empty_vectors
from exemplar.retrieval.ports import Encoder

__all__ = ["EncoderActor", "RayShardEncoder", "RayStage"]

log = logging.getLogger(__name__)


def _item_json(item: NewItem) -> str:
    return json.dumps({
        "id": item.id, "label": item.label, "text": item.text, "domain": item.domain, "metadata": item.metadata,
        "image": item.image, "media_root": item.media_root,
        "embedding": None if item.embedding is None else np.asarray(item.embedding, dtype=np.float64).tolist(),
    })


class EncoderActor:
    """One encoder per actor, loaded once; each call embeds a batch of serialised items."""

    def __init__(self, spec: str, embed: str, precomputed: bool, device: str, max_pixels: int, batch_size: int) -> None:
        from exemplar.encoders import load_encoder

        self.encoder = load_encoder(spec, device=device, max_pixels=max_pixels, batch_size=batch_size)
        self.embed = embed
        self.precomputed = precomputed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from exemplar.retrieval.store.items import embed_items

        items = []
        for raw, image in zip(batch["item"], batch["image_bytes"]):
            fields = json.loads(raw)
            embedding = fields.pop("embedding")
            items.append(NewItem(**fields, image_bytes=bytes(image) or None,
                                 embedding=None if embedding is None else np.asarray(embedding)))
        vectors, kept, errors = embed_items(self.encoder, self.embed, items, precomputed=self.precomputed,
                                            batch_size=len(items) or 1)
        n = len(items)
        out = np.zeros((n, *vectors.shape[1:]), np.float32)  # (n, 3, dim) where both modalities are kept
        out[kept] = vectors
        ok = np.zeros(n, bool)
        ok[kept] = True
        error = np.array([""] * n, dtype=object)
        for e in errors:
            error[e.index] = json.dumps(dataclasses.asdict(e))
        return {"idx": batch["idx"], "ok": ok, "vector": out, "error": error}


class RayShardEncoder:
    def __init__(self, stage: "RayStage", spec: str, embed: str, precomputed: bool, batch_size: int, *,
                 dim: int) -> None:
        self.stage = stage
        self.dim = dim
        self.spec = spec
        self.embed = embed
        self.precomputed = precomputed
        self.batch_size = batch_size

    def close(self) -> None:
        return None

    def encode(self, items: list[NewItem]) -> tuple[np.ndarray, list[int], list[ItemError]]:
        import ray

        self.stage.ensure_ray()
        rows = [{"idx": i, "item": _item_json(item), "image_bytes": item.image_bytes or b""} for i, item in enumerate(items)]
        dataset = ray.data.from_items(rows).map_batches(
            EncoderActor,
            fn_constructor_kwargs={"spec": self.spec, "embed": self.embed, "precomputed": self.precomputed,
                                   "device": self.stage.device, "max_pixels": self.stage.max_pixels,
                                   "batch_size": self.batch_size},
            batch_size=self.batch_size,
            batch_format="numpy",
            concurrency=self.stage.actors,
            num_gpus=self.stage.num_gpus_per_actor or None,
        )
        results = sorted(dataset.take_all(), key=lambda r: int(r["idx"]))
        kept = [int(r["idx"]) for r in results if r["ok"]]
        shape = empty_vectors(self.dim, self.embed, precomputed=self.precomputed).shape[1:]
        vectors = np.asarray([r["vector"] for r in results if r["ok"]], dtype=np.float32).reshape(len(kept), *shape)
        errors = [ItemError(**json.loads(r["error"])) for r in results if not r["ok"]]
        for err, r in zip(errors, [r for r in results if not r["ok"]]):
            object.__setattr__(err, "index", int(r["idx"]))
        return vectors, kept, errors


@dataclasses.dataclass
class RayStage:
    """A stage factory for ``BuildRunner``: one ``RayShardEncoder`` per build."""

    address: str | None = None
    actors: int = 2
    num_gpus_per_actor: float = 0.0
    device: str = "auto"
    max_pixels: int = 40_000_000

    def ensure_ray(self) -> None:
        import ray

        if not ray.is_initialized():
            options: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False, "include_dashboard": False}
            if self.address:
                options["address"] = self.address
            ray.init(**options)
            ray.data.DataContext.get_current().enable_progress_bars = False

    def __call__(self, encoder: Encoder, embed: str, precomputed: bool, spec: BuildSpec) -> RayShardEncoder:
        return RayShardEncoder(self, encoder.spec, embed, precomputed, spec.batch_size, dim=encoder.dim)
