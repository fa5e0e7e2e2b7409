"""Building a pool version from a source, in shards that survive a crash.

The source is read in order and cut into shards of ``shard_size`` rows. Each shard is decoded (in
parallel threads, overlapped with encoding) and encoded in batches, then written to the build's work
folder (``<data>/builds/<job id>/shard-N.npy`` + ``shard-N.json``, the JSON renamed into place last).
A build that is killed resumes from its last completed shard. When every shard is done the vectors
are indexed and written as a new version; nothing before that touches the serving version.
Bad rows are skipped and reported, never fatal.

Precomputed vectors in a Parquet or Arrow manifest without images are read, checked and scaled a
column at a time (``sources.columnar_source``): the same shards, items, vectors and errors as a
read a row at a time, for a fraction of its cost per row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from exemplar.errors import Conflict, InvalidRequest, NotFound
from exemplar.retrieval.store.catalog import Fence, ItemRow, PoolRecord
from exemplar.retrieval.store.files import write_bytes_atomic
from exemplar.retrieval.store.modalities import empty_vectors
from exemplar.retrieval.store.items import (
    NO_EMBEDDING,
    ItemError,
    NewItem,
    column_field_errors,
    embed_items,
    encode_prepared,
    item_row,
    prepare_items,
    unit_rows,
    validate_item_fields,
    width_message,
)
from exemplar.retrieval.build.jobs import JobCancelled, JobContext, JobRecord, JobService
from exemplar.retrieval.ports import Encoder, EncoderProvider
from exemplar.retrieval.serving.cache import SnapshotCache
from exemplar.retrieval.store.store import PoolStore
from exemplar.retrieval.build.sources import (
    FORMATS,
    ColumnBlock,
    RowError,
    SourceRow,
    columnar_source,
    count_rows,
    detect_format,
    read_source,
)

__all__ = ["BuildReport", "BuildService", "BuildSpec", "LocalShardEncoder", "ShardEncoder", "build_pool"]

log = logging.getLogger(__name__)

BuildMode = Literal["replace", "upsert"]
MAX_REPORTED_ERRORS = 1000
DUPLICATE = "duplicate id; the first row with it was kept"


@dataclasses.dataclass(frozen=True)
class BuildSpec:
    pool: str
    source: str
    format: str | None = None
    media_root: str | None = None
    mode: BuildMode = "replace"
    index: str | None = None  # None: the pool's own index spec
    shard_size: int = 4096
    batch_size: int = 256
    workers: int = 2

    def check(self) -> None:
        if self.mode not in ("replace", "upsert"):
            raise InvalidRequest("mode must be 'replace' or 'upsert'", param="mode")
        if self.format is not None and self.format not in FORMATS:
            raise InvalidRequest(f"unknown source format {self.format!r}; valid: {', '.join(FORMATS)}", param="format")
        for name, low, high in (("shard_size", 1, 10_000_000), ("batch_size", 1, 65_536), ("workers", 1, 256)):
            if not low <= getattr(self, name) <= high:
                raise InvalidRequest(f"{name} must be between {low} and {high}", param=name)

    def to_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "BuildSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in fields})


@dataclasses.dataclass(frozen=True)
class BuildReport:
    pool: str
    version: int | None
    added: int
    skipped: int
    errors: list[RowError]
    seconds: float
    shards: int
    resumed_shards: int
    index: dict[str, Any]


class ShardEncoder(Protocol):
    """The encode stage: items in, ``(vectors, kept indices, errors)`` out."""

    def encode(self, items: list[NewItem]) -> tuple[np.ndarray, list[int], list[ItemError]]:
        ...

    def close(self) -> None:
        ...


class LocalShardEncoder:
    """Encodes in this process: images decoded by ``workers`` threads, the next batch decoded while
    the current one is encoded."""

    def __init__(self, encoder: Encoder, embed: str, *, precomputed: bool, batch_size: int = 256, workers: int = 2) -> None:
        self.encoder = encoder
        self.embed = embed
        self.precomputed = precomputed
        self.batch_size = batch_size
        self._decoders = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="exemplar-decode")
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exemplar-prefetch")

    def close(self) -> None:
        self._decoders.shutdown(wait=True)
        self._prefetch.shutdown(wait=True)

    def encode(self, items: list[NewItem]) -> tuple[np.ndarray, list[int], list[ItemError]]:
        if self.precomputed:
            return embed_items(self.encoder, self.embed, items, precomputed=True, batch_size=self.batch_size)
        errors: list[ItemError] = []
        chunks = [range(s, min(s + self.batch_size, len(items))) for s in range(0, len(items), self.batch_size)]
        kept: list[int] = []
        parts: list[np.ndarray] = []
        batch_errors: list[list[ItemError]] = [[] for _ in chunks]

        def prepare(i: int):  # noqa: ANN202
            return prepare_items(self.encoder, self.embed, items, chunks[i], batch_errors[i], self._decoders)

        pending = self._prefetch.submit(prepare, 0) if chunks else None
        for i in range(len(chunks)):
            assert pending is not None
            prepared = pending.result()
            if i + 1 < len(chunks):
                pending = self._prefetch.submit(prepare, i + 1)
            parts.append(encode_prepared(self.encoder, self.embed, items, prepared))
            kept.extend(prepared.kept)
            errors.extend(batch_errors[i])
        vectors = np.concatenate(parts) if parts else empty_vectors(self.encoder.dim, self.embed,
                                                                     precomputed=self.precomputed)
        return vectors, kept, errors


class _Context(Protocol):
    fence: Fence | None  # the job's claim, checked by the version commit (None: no job)

    def check(self) -> None: ...

    def progress(self, *, force: bool = False, **values: Any) -> None: ...


class _Inline:
    """The context of a build run without a job (``build_pool``)."""

    fence = None

    def __init__(self, on_progress: Callable[[dict[str, Any]], None] | None) -> None:
        self.on_progress = on_progress

    def check(self) -> None:
        return None

    def progress(self, *, force: bool = False, **values: Any) -> None:
        if self.on_progress is not None:
            self.on_progress(values)


def _shard_paths(workdir: Path, k: int) -> tuple[Path, Path]:
    return workdir / f"shard-{k:06d}.npy", workdir / f"shard-{k:06d}.json"


# A shard's catalog rows are stored a column at a time: no object per row to write or read back.
_SHARD_FIELDS = ("item_id", "label", "text", "image", "media_root", "domain", "metadata")


def _shard_columns(rows: list[ItemRow]) -> dict[str, list[Any]]:
    return {name: [getattr(r, name) for r in rows] for name in _SHARD_FIELDS}


def _shard_item_rows(shard: dict[str, Any]) -> list[ItemRow]:
    if "rows" in shard:  # written a row at a time, by a version before the columns
        return [ItemRow(uid=-1, **r) for r in shard["rows"]]
    columns = shard["columns"]
    return [ItemRow(uid=-1, item_id=item_id, label=label, text=text, image=image, media_root=media_root, domain=domain,
                    metadata=metadata)
            for item_id, label, text, image, media_root, domain, metadata in zip(*(columns[f] for f in _SHARD_FIELDS))]


def _shard_ids(shard: dict[str, Any]) -> list[str]:
    return [r["item_id"] for r in shard["rows"]] if "rows" in shard else shard["columns"]["item_id"]


def _read_ahead(chunks: Iterator[Any], thread: ThreadPoolExecutor) -> Iterator[Any]:
    """``chunks``, each next one read on ``thread`` while the caller works on the current one."""
    pending = thread.submit(next, chunks, None)
    while (chunk := pending.result()) is not None:
        pending = thread.submit(next, chunks, None)
        yield chunk


def _chunks(rows: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class BuildRunner:
    """Runs one build in ``workdir``, resuming from the shards already there.

    ``columnar=False`` reads every source a row at a time, even one the column-wise read would
    take: the reference that read is tested against.
    """

    def __init__(self, store: PoolStore, snapshots: SnapshotCache, encoders: EncoderProvider, spec: BuildSpec,
                 workdir: Path, stage: Callable[[Encoder, str, bool, BuildSpec], ShardEncoder] | None = None, *,
                 columnar: bool = True) -> None:
        self.store = store
        self.snapshots = snapshots  # what an upsert is written on top of
        self.encoders = encoders
        self.spec = spec
        self.workdir = workdir
        self.stage = stage or (lambda enc, embed, pre, spec: LocalShardEncoder(
            enc, embed, precomputed=pre, batch_size=spec.batch_size, workers=spec.workers))
        self.columnar = columnar

    def run(self, ctx: _Context) -> BuildReport:
        spec = self.spec
        spec.check()
        started = time.monotonic()
        pool = self.store.pool(spec.pool)
        source = Path(spec.source)
        fmt = spec.format or detect_format(source)
        rows_iter = read_source(source, fmt, Path(spec.media_root) if spec.media_root else None)
        total = count_rows(source, fmt)
        encoder = self.encoders(pool.encoder)
        precomputed = pool.encoder.startswith("precomputed:")
        # Vectors need no encoder: a column-wise source skips the encode stage (and its executor).
        columns = columnar_source(source, fmt) if self.columnar and precomputed else None
        reader = None
        chunks: Iterator[Any]
        if columns is not None:
            reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exemplar-read")
            chunks = _read_ahead(columns.tables(spec.shard_size), reader)
        else:
            chunks = _chunks(rows_iter, spec.shard_size)
        self.workdir.mkdir(parents=True, exist_ok=True)
        counts = {"read": 0, "encoded": 0, "skipped": 0}
        errors: list[RowError] = []
        seen: set[str] = set()
        resumed = 0
        stage = None
        encoded_now = 0

        def report(force: bool = False, shards: int = 0, final: bool = False) -> None:
            elapsed = max(time.monotonic() - started, 1e-9)
            rate = encoded_now / elapsed
            done = counts["read"]
            # count_rows is an estimate (a CSV field may span lines): a low one grows with the rows
            # actually read, and once the source is exhausted those rows are the total.
            shown = done if final else max(total, done) if total is not None else None
            eta = (shown - done) / rate if shown is not None and rate > 0 else None
            ctx.progress(force=force, done=done, total=shown, encoded=counts["encoded"],
                         skipped=counts["skipped"], shards_done=shards, resumed_shards=resumed,
                         rate_per_s=round(rate, 1), eta_s=round(eta, 1) if eta is not None else None)

        try:
            k = -1
            for k, chunk in enumerate(chunks):
                ctx.check()
                vectors_path, rows_path = _shard_paths(self.workdir, k)
                if rows_path.exists():  # completed before a crash: take it as it is
                    done = json.loads(rows_path.read_text())
                    done_ids = _shard_ids(done)
                    seen.update(done_ids)
                    counts["read"] += len(chunk)
                    counts["encoded"] += len(done_ids)
                    counts["skipped"] += len(done["errors"])
                    errors.extend(RowError(**e) for e in done["errors"][: max(0, MAX_REPORTED_ERRORS - len(errors))])
                    resumed += 1
                    continue
                if columns is not None:
                    block = ColumnBlock.read(chunk, first_line=counts["read"] + 1)
                    vectors, shard_columns, shard_errors = _column_shard(block, seen, encoder.dim)
                else:
                    if stage is None:
                        stage = self.stage(encoder, pool.embed, precomputed, spec)
                    vectors, shard_columns, shard_errors = self._row_shard(chunk, seen, stage, pool, encoder.dim)
                np.save(vectors_path, vectors, allow_pickle=False)
                write_bytes_atomic(rows_path, json.dumps({
                    "columns": shard_columns,
                    "errors": [dataclasses.asdict(e) for e in shard_errors],
                }).encode())
                counts["read"] += len(chunk)
                added = len(shard_columns["item_id"])
                counts["encoded"] += added
                counts["skipped"] += len(shard_errors)
                encoded_now += added
                errors.extend(shard_errors[: max(0, MAX_REPORTED_ERRORS - len(errors))])
                report(shards=k + 1)
            shards = k + 1
        finally:
            if stage is not None:
                stage.close()
            if reader is not None:
                reader.shutdown(wait=True)
        ctx.check()
        report(force=True, shards=shards, final=True)
        rows: list[ItemRow] = []
        parts: list[np.ndarray] = []
        for k in range(shards):
            vectors_path, rows_path = _shard_paths(self.workdir, k)
            rows.extend(_shard_item_rows(json.loads(rows_path.read_text())))
            parts.append(np.load(vectors_path, mmap_mode="r", allow_pickle=False))
        version = None
        index_stats: dict[str, Any] = {}
        if rows or spec.mode == "replace":
            matrix = _stacked(parts, empty_vectors(encoder.dim, pool.embed, precomputed=precomputed))
            version = self.store.write(pool, rows, matrix, bases=self.snapshots, source=str(source),
                                       replace_all=spec.mode == "replace",
                                       index_spec=spec.index, fence=ctx.fence)
            index_stats = self.store.version(pool.id, version).stats.get("index", {})
        return BuildReport(pool=spec.pool, version=version, added=len(rows), skipped=counts["skipped"], errors=errors,
                           seconds=round(time.monotonic() - started, 3), shards=shards, resumed_shards=resumed,
                           index=index_stats)

    def _row_shard(self, chunk: list[SourceRow], seen: set[str], stage: ShardEncoder, pool: PoolRecord,
                   dim: int) -> tuple[np.ndarray, dict[str, list[Any]], list[RowError]]:
        """A shard read a row at a time: its vectors, catalog rows (as columns) and errors in line order."""
        shard_errors: list[RowError] = []
        items: list[NewItem] = []
        lines: list[int] = []
        for source_row in chunk:
            line = source_row.line
            if source_row.error is not None:
                shard_errors.append(source_row.error)
                continue
            item = source_row.item
            try:
                validate_item_fields(item, param="row")
            except InvalidRequest as exc:
                shard_errors.append(RowError(line, item.id, exc.message))
                continue
            if item.id in seen:
                shard_errors.append(RowError(line, item.id, DUPLICATE))
                continue
            seen.add(item.id)
            items.append(item)
            lines.append(line)
        none = empty_vectors(dim, pool.embed, precomputed=pool.encoder.startswith("precomputed:"))
        vectors, kept, item_errors = stage.encode(items) if items else (none, [], [])
        for err in item_errors:
            shard_errors.append(RowError(lines[err.index], err.item_id, err.message))
            seen.discard(items[err.index].id)
        for i in kept:
            self.store.store_media(pool, items[i])
        shard_errors.sort(key=lambda e: e.line)
        return vectors, _shard_columns([item_row(items[i]) for i in kept]), shard_errors


def _stacked(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    """The shards' vectors in one array, copied from their memory-mapped files into it (one copy in
    memory, not the loaded shards and their concatenation). A build resumed across the release that
    began keeping both modalities has shards of both shapes: its pool gets the fused rows only."""
    if not parts:
        return empty
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) > 1:
        log.warning("a resumed build's shards differ in shape %s: writing the fused vectors only", sorted(shapes))
        parts = [p[:, 0] if p.ndim == 3 else p for p in parts]
    out = np.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), np.float32)
    start = 0
    for part in parts:
        out[start : start + len(part)] = part
        start += len(part)
    return out


def _column_shard(block: ColumnBlock, seen: set[str],
                  dim: int) -> tuple[np.ndarray, dict[str, list[Any]], list[RowError]]:
    """``BuildRunner._row_shard`` of a precomputed shard read a column at a time: the checks in the
    same order (reading, fields, duplicates, vectors), each row's first failure its error, with
    Python per row only to look ids up and to write the rows out."""
    size, line = block.size, block.first_line
    nothing: list[Any] = [None] * size
    ids = block.values.get("id", nothing)
    errors = dict(block.errors)
    for i, message in column_field_errors(size, block.texts, undecodable=block.undecodable,
                                          metadata=block.metadata).items():
        if i not in errors:
            errors[i] = RowError(line + i, ids[i], message)
    passed = np.ones(size, bool)
    passed[list(errors)] = False
    rows = np.flatnonzero(passed)
    candidates = ids if len(rows) == size else [ids[i] for i in rows.tolist()]
    fresh = set(candidates)
    if len(fresh) == len(candidates) and seen.isdisjoint(fresh):
        seen |= fresh
    else:  # a duplicate: the row read's order decides which row keeps the id
        kept: list[int] = []
        for i, item_id in zip(rows.tolist(), candidates):
            if item_id in seen:
                errors[i] = RowError(line + i, item_id, DUPLICATE)
            else:
                seen.add(item_id)
                kept.append(i)
        rows = np.asarray(kept, np.int64)
    # Vector errors come last and free the id, as the encode stage's errors do (after the shard's
    # duplicates are settled: a later row with the id in this shard stays a duplicate).
    widths = block.lengths[rows]
    for i, width in zip(rows[widths != dim].tolist(), widths[widths != dim].tolist()):
        message = NO_EMBEDDING if width < 0 else width_message(width, dim)
        errors[i] = RowError(line + i, ids[i], message)
        seen.discard(ids[i])
    rows = rows[widths == dim]
    vectors, problems = unit_rows(block.matrix(rows, dim))
    if len(vectors) < len(rows):
        good = np.fromiter((p is None for p in problems), bool, len(rows))
        for i, message in zip(rows[~good].tolist(), (p for p in problems if p is not None)):
            errors[i] = RowError(line + i, ids[i], message)
            seen.discard(ids[i])
        rows = rows[good]
    # what item_row makes of each kept row
    metadata = [json.dumps(m) if m else None for m in block.metadata] if block.metadata is not None else nothing
    fields = {"item_id": ids, "label": block.values.get("label", nothing), "text": block.values.get("text", nothing),
              "image": nothing, "media_root": nothing, "domain": block.values.get("domain", nothing),
              "metadata": metadata}
    if len(rows) < size:
        keep = rows.tolist()
        fields = {name: [values[i] for i in keep] for name, values in fields.items()}
    return vectors, fields, [errors[i] for i in sorted(errors)]


def _report_dict(report: BuildReport) -> dict[str, Any]:
    out = dataclasses.asdict(report)
    out["errors"] = out["errors"][:100]
    return out


class BuildService:
    """Builds as jobs: one active build per pool; a build whose process died resumes on recovery."""

    KIND = "build"

    def __init__(self, store: PoolStore, snapshots: SnapshotCache, encoders: EncoderProvider, jobs: JobService,
                 stage: Callable[[Encoder, str, bool, BuildSpec], ShardEncoder] | None = None) -> None:
        self.store = store
        self.snapshots = snapshots
        self.encoders = encoders
        self.jobs = jobs
        self.stage = stage
        self.root = store.builds_dir

    def start(self, spec: BuildSpec) -> JobRecord:
        spec.check()
        self.store.pool(spec.pool)
        try:
            exists = Path(spec.source).exists()
        except OSError:  # e.g. a name longer than the filesystem allows: nothing there either
            exists = False
        if not exists:
            raise NotFound(f"source {spec.source!r} does not exist", param="source")
        active = self.jobs.list(pool=spec.pool, states=("queued", "running"), kinds=(self.KIND,))
        if active:
            raise Conflict(f"pool {spec.pool!r} already has a build running (job {active[0].id}); "
                           "wait for it or cancel it", param="pool")
        return self.jobs.submit(self.KIND, spec.pool, spec.to_params(), self.work(spec.to_params()))

    def work(self, params: dict[str, Any]) -> Callable[[JobContext], dict[str, Any]]:
        spec = BuildSpec.from_params(params)

        def run(ctx: JobContext) -> dict[str, Any]:
            workdir = self.root / ctx.job_id
            committed = ctx.committed_version()
            if committed is not None:  # an earlier attempt committed, then its replica died
                shutil.rmtree(workdir, ignore_errors=True)
                return {"pool": spec.pool, "version": committed, "committed_by_earlier_attempt": True}
            try:
                report = BuildRunner(self.store, self.snapshots, self.encoders, spec, workdir, self.stage).run(ctx)
            except JobCancelled:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            shutil.rmtree(workdir, ignore_errors=True)
            return _report_dict(report)

        return run


def build_pool(
    store: PoolStore,
    snapshots: SnapshotCache,
    encoders: EncoderProvider,
    name: str,
    source: Path,
    *,
    fmt: str | None = None,
    media_root: Path | None = None,
    mode: BuildMode = "replace",
    batch_size: int = 256,
    shard_size: int = 4096,
    workers: int = 2,
    index: str | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    workdir: Path | None = None,
) -> BuildReport:
    """Build in this thread, without a job (tests, the demo, scripts)."""
    spec = BuildSpec(pool=name, source=str(source), format=fmt, media_root=str(media_root) if media_root else None,
                     mode=mode, index=index, shard_size=shard_size, batch_size=batch_size, workers=workers)
    spec.check()
    folder = workdir or store.builds_dir / f"inline-{time.time_ns()}"
    try:
        return BuildRunner(store, snapshots, encoders, spec, folder).run(_Inline(on_progress))
    finally:
        if workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
