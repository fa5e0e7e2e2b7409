"""Background upkeep of pools: compaction as jobs, started after writes when the policy asks for it."""

from __future__ import annotations

import logging
import shutil
from typing import Any

import numpy as np

from exemplar.errors import NotFound
from exemplar.retrieval.adapt.adapters import TrainedAdapter, load_adapter_weights, write_adapter
from exemplar.retrieval.store.files import write_npy_atomic
from exemplar.retrieval.build.jobs import JobContext, JobRecord, JobService
from exemplar.retrieval.ports import SharedSegments
from exemplar.retrieval.store.compaction import CompactionPolicy, compact, plan
from exemplar.retrieval.store.manifest import SegmentEntry
from exemplar.retrieval.store.segments import LoadedSegment, load_segment
from exemplar.retrieval.store.store import PoolStore
from exemplar.retrieval.store.versions import legacy_index_of, new_segment_name, read_deletes

__all__ = ["CompactionService"]

log = logging.getLogger(__name__)


class CompactionService:
    KIND = "compact"

    def __init__(self, store: PoolStore, jobs: JobService, policy: CompactionPolicy = CompactionPolicy(), *,
                 segments: SharedSegments | None = None, automatic: bool = True) -> None:
        self.store = store
        self.jobs = jobs
        self.policy = policy
        self.segments = segments  # the serving cache's, so that a merge reads what is already loaded
        if automatic:
            store.on_write(self.maybe_start)

    def needed(self, pool: str) -> bool:
        record = self.store.pool(pool)
        if record.current_version is None:
            return False
        return plan(self.store.manifest(record.id, record.current_version), self.policy) is not None

    def maybe_start(self, pool: str) -> JobRecord | None:
        """Start a compaction of ``pool`` when its current version needs one and none is running
        (in any process: the catalog admits one active compaction job per pool)."""
        try:
            if not self.needed(pool):
                return None
        except NotFound:
            return None
        return self.jobs.submit(self.KIND, pool, {}, self._work(pool), unique=True)

    def start(self, pool: str) -> JobRecord:
        """Compact now (a job), whether or not the policy would have."""
        self.store.pool(pool)
        job = self.jobs.submit(self.KIND, pool, {"force": True}, self._work(pool, force=True), unique=True)
        if job is None:
            active = self.jobs.list(pool=pool, states=("queued", "running"), kinds=(self.KIND,))
            return active[0]
        return job

    def _work(self, pool: str, *, force: bool = False) -> Any:  # noqa: ANN401 - Work
        def run(ctx: JobContext) -> dict[str, Any]:
            merged: list[dict[str, Any]] = []
            for _ in range(64):  # one merge per round until the policy is content (bounded)
                ctx.check()
                result = self.compact_once(pool, ctx, force=force)
                if not result["merged"]:
                    break
                merged.append(result)
                ctx.progress(force=True, done=len(merged), merges=len(merged))
            return {"pool": pool, "merges": merged}

        return run

    def compact_once(self, pool: str, ctx: JobContext | None = None, *, force: bool = False) -> dict[str, Any]:
        store = self.store
        record = store.pool(pool)
        files = store.files

        def load(entry: SegmentEntry) -> LoadedSegment:
            folder = files.segment_dir(record.id, entry.name)

            def read() -> LoadedSegment:
                return load_segment(
                    entry.name, folder, legacy_rows=lambda uids: store.catalog.item_rows(record.id, uids.tolist()),
                    legacy_index=legacy_index_of(store.catalog, record.id, entry.name))

            return self.segments.get(record.id, entry.name, read) if self.segments is not None else read()

        def write_deletes(name: str, rows: np.ndarray) -> str:
            filename = f"{name}-c{new_segment_name()[1:9]}.npy"  # deletion files are never rewritten
            write_npy_atomic(files.deletes_dir(record.id) / filename, np.asarray(rows, np.int64))
            return filename

        self._adopt_legacy_adapters(record.id)
        result = compact(
            store.catalog, record,
            segment_dir=lambda name: files.segment_dir(record.id, name),
            read_deletes=lambda entry: read_deletes(files, record.id, entry),
            write_deletes=write_deletes, load=load, new_name=new_segment_name,
            discard=lambda name: shutil.rmtree(files.segment_dir(record.id, name), ignore_errors=True),
            index_policy=store.index_policy, policy=self.policy, check=ctx.check if ctx else (lambda: None),
            force=force,
        )
        if result.merged:
            log.info("pool %s: merged %s into %s (%d rows, %d purged)", pool, result.merged, result.into,
                     result.rows, result.purged)
            store.changed(pool)  # the manifest swap went through the catalog directly
            store.collect_garbage(record.id)
        return result.to_dict()

    def _adopt_legacy_adapters(self, pool_id: int) -> None:
        """Adapters trained before segments keep their weights in a version folder, which compaction
        may retire: copy them to the pool's adapters folder first (the vectors move with the rows)."""
        versions = self.store.pool_dir(pool_id) / "versions"
        for weights in versions.glob("*/adapters/*/weights.npz"):
            source = weights.parent
            target = self.store.adapters_dir(pool_id) / source.name
            if not target.exists():
                adapter, info = load_adapter_weights([source])
                write_adapter(target, TrainedAdapter(adapter, info))

