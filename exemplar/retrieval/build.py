"""Building a pool version from a source (manifest or image folder)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from exemplar.retrieval.catalog import ItemRow
from exemplar.retrieval.items import embed_items, validate_item_fields
from exemplar.retrieval.pools import PoolService, item_row
from exemplar.retrieval.sources import RowError, read_source
from exemplar.errors import InvalidRequest

__all__ = ["BuildProgress", "BuildReport", "build_pool"]

BuildMode = Literal["replace", "upsert"]
MAX_REPORTED_ERRORS = 1000


@dataclasses.dataclass
class BuildProgress:
    read: int = 0
    encoded: int = 0
    skipped: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def rate_per_s(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.encoded / elapsed if elapsed > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class BuildReport:
    pool: str
    version: int | None
    added: int
    skipped: int
    errors: list[RowError]
    seconds: float


def build_pool(
    pools: PoolService,
    name: str,
    source: Path,
    *,
    fmt: str | None = None,
    media_root: Path | None = None,
    mode: BuildMode = "replace",
    batch_size: int = 512,
    on_progress: Callable[[BuildProgress], None] | None = None,
) -> BuildReport:
    """Encode every readable item of ``source`` and write them as a new version of pool ``name``.

    ``replace``: the version holds exactly the source's items; ``upsert``: the current version's
    items plus the source's (same id replaces). Bad rows are skipped and reported.
    """
    if mode not in ("replace", "upsert"):
        raise InvalidRequest("mode must be 'replace' or 'upsert'", param="mode")
    pool = pools.get(name)
    encoder = pools.encoder_for(pool)
    precomputed = pool.encoder.startswith("precomputed:")
    progress = BuildProgress()
    errors: list[RowError] = []
    rows: list[ItemRow] = []
    vectors: list[np.ndarray] = []
    seen: set[str] = set()
    batch: list[tuple[int, object]] = []

    def skip(error: RowError) -> None:
        progress.skipped += 1
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(error)

    def flush() -> None:
        if not batch:
            return
        items = [item for _, item in batch]
        matrix, kept, item_errors = embed_items(encoder, pool.embed, items, precomputed=precomputed)  # type: ignore[arg-type]
        for err in item_errors:
            skip(RowError(batch[err.index][0], err.item_id, err.message))
        for i in kept:
            rows.append(item_row(items[i]))  # type: ignore[arg-type]
        vectors.append(matrix)
        progress.encoded += len(kept)
        batch.clear()
        if on_progress is not None:
            on_progress(progress)

    for source_row in read_source(source, fmt, media_root):
        progress.read += 1
        if source_row.error is not None:
            skip(source_row.error)
            continue
        item = source_row.item
        assert item is not None
        try:
            validate_item_fields(item, param="row")
        except InvalidRequest as exc:
            skip(RowError(progress.read, item.id, exc.message))
            continue
        if item.id in seen:
            skip(RowError(progress.read, item.id, "duplicate id; the first row with it was kept"))
            continue
        seen.add(item.id)
        batch.append((progress.read, item))
        if len(batch) >= batch_size:
            flush()
    flush()
    version = None
    if rows or mode == "replace":
        matrix = np.concatenate(vectors) if vectors else np.empty((0, encoder.dim), np.float32)
        version = pools.write(pool, rows, matrix, source=str(source), replace_all=mode == "replace")
    return BuildReport(
        pool=name,
        version=version,
        added=len(rows),
        skipped=progress.skipped,
        errors=errors,
        seconds=round(time.monotonic() - progress.started, 3),
    )
