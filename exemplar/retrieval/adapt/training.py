"""Training a pool version's CCI adapter as a job, through the ``AdapterTrainer`` port."""

from __future__ import annotations

import shutil
import time
from typing import Any

import numpy as np

from exemplar.errors import Incompatible
from exemplar.retrieval.adapt.adapters import AdapterTrainer, TrainedAdapter, write_adapter
from exemplar.retrieval.store.segments import index_adapter_vectors, write_adapter_vectors
from exemplar.retrieval.build.jobs import JobContext, JobRecord, JobService
from exemplar.retrieval.serving.cache import SnapshotCache
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.store.store import PoolStore

__all__ = ["AdapterService", "training_inputs"]


def training_inputs(snap: Snapshot, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(vectors, label codes, domain codes)`` for training; items without a domain share one."""
    rows = np.arange(snap.size) if rows is None else rows
    return np.asarray(snap.vectors)[rows], snap.label_codes[rows], snap.domain_codes[rows] + 1


class AdapterService:
    def __init__(self, store: PoolStore, snapshots: SnapshotCache, jobs: JobService, trainer: AdapterTrainer) -> None:
        self.store = store
        self.snapshots = snapshots
        self.jobs = jobs
        self.trainer = trainer

    def start(self, pool: str, params: dict[str, Any]) -> JobRecord:
        """Train an adapter for the pool's current version in the background; returns the job."""
        snap = self.snapshots.snapshot(pool)
        labelled = snap.label_codes >= 0
        if len(np.unique(snap.label_codes[labelled])) < 2:
            raise Incompatible(f"pool {pool!r} needs labelled items of at least 2 classes to train an adapter", param="pool")
        params = dict(params)
        return self.jobs.submit("adapter", pool, {"version": snap.version, **params},
                                lambda ctx: self._train(snap, params, ctx))

    def _remove_replaced(self, pool_id: int, snap: Snapshot, *, keep: int) -> None:
        """Remove the files of the version's earlier adapters that no kept version inherited."""
        inherited = self.store.inherited_adapters(pool_id)
        for old in self.store.adapter_ids(pool_id, snap.version):
            if old == keep or old in inherited:
                continue
            shutil.rmtree(self.store.adapters_dir(pool_id) / str(old), ignore_errors=True)
            for part in snap.space.parts if snap.space is not None else ():
                shutil.rmtree(part.segment.folder / "adapters" / str(old), ignore_errors=True)

    def _map_segments(self, snap: Snapshot, adapter_id: int, trained: TrainedAdapter, ctx: JobContext,
                      epochs: int | None) -> dict[str, Any]:
        """Write each segment's rows in the adapter space, and index them where the segment is
        indexed; returns what the indexing took (for the job's result and the adapter's info)."""
        parts = snap.space.parts if snap.space is not None else []
        started = time.monotonic()
        indexed: list[dict[str, Any]] = []
        done = len(trained.info.get("history", []))
        for i, part in enumerate(parts):
            ctx.progress(force=True, done=done, total=epochs, phase="index", segments_done=i, segments=len(parts),
                         index_s=round(time.monotonic() - started, 3))
            adapted = trained.adapter.apply(part.segment.vectors)
            write_adapter_vectors(part.segment.folder, adapter_id, adapted)
            stats = index_adapter_vectors(part.segment, adapter_id, adapted, self.store.index_policy)
            del adapted
            if stats is not None:
                classes = stats.get("classes") or {}
                indexed.append({"segment": part.segment.name, "rows": part.segment.size, "factory": stats.get("factory"),
                                "seconds": stats.get("index_s"), "recall_at_k": stats.get("recall_at_k"),
                                "class_recall_at_k": classes.get("recall_at_k")})
            ctx.check()
        return {"segments": len(parts), "indexed": indexed, "seconds": round(time.monotonic() - started, 3)}

    def _train(self, snap: Snapshot, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        store = self.store
        pool = store.pool(snap.pool)
        vectors, labels, domains = training_inputs(snap)
        epochs = int(params.get("epochs", 0)) or None
        started = time.monotonic()

        def on_epoch(epoch: int, record: dict[str, float]) -> None:
            ctx.progress(done=epoch + 1, total=epochs, phase="train", val_loss=record.get("val_loss"),
                         rate_per_s=round((epoch + 1) / max(time.monotonic() - started, 1e-9), 3))

        adapter_id = store.reserve_adapter(pool.id, snap.version)
        try:
            trained = self.trainer(vectors, labels, domains, params, on_epoch=on_epoch, should_stop=ctx.cancelled)
            del vectors, labels, domains  # the training copy goes before the segments are mapped and indexed
            ctx.check()
            info = {**trained.info, "version": snap.version, "adapter_id": adapter_id, "trained_at": time.time()}
            write_adapter(store.adapters_dir(pool.id) / str(adapter_id), TrainedAdapter(trained.adapter, info))
            # Every segment of the version gets its rows mapped (segments shared with later versions
            # too: a version written on top of this one inherits the adapter with its manifest), and
            # a segment with an index gets the same kind of index over them (the store's policy).
            info["index"] = self._map_segments(snap, adapter_id, trained, ctx, epochs)
            store.commit_adapter(pool, adapter_id, info)
        except BaseException:
            store.fail_adapter(adapter_id)
            raise
        self._remove_replaced(pool.id, snap, keep=adapter_id)
        ctx.progress(force=True, done=len(trained.info.get("history", [])), total=epochs, phase="done",
                     index_s=info["index"]["seconds"])
        return {"pool": snap.pool, "version": snap.version, "adapter_id": adapter_id,
                **{k: v for k, v in info.items() if k not in ("history",)}}

