"""A version served over several segments, seen by strategies as one matrix of live rows.

Global rows number the live rows of every segment in manifest order (deleted rows have none), so
masks, ``random`` and ``balanced`` work on live items only. Searches run per segment (its ANN index,
or an exact scan of its memory-mapped vectors) with the deletions and the request's filter as a
mask, and the per-segment ``D, I`` are merged by score: the merge is exact, so the union is exactly
as good as each segment's own search.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from exemplar.retrieval.index.classes import ClassSearch
from exemplar.retrieval.index.vectors import EXACT_SUBSET_ROWS, TUNED, Effort, VectorIndex, exact_scan
from exemplar.retrieval.store.segments import LoadedSegment, id_hashes

__all__ = [
    "ExactIndex",
    "IdLookup",
    "ItemColumn",
    "Part",
    "RowSpace",
    "SegmentedClasses",
    "SegmentedIndex",
    "SegmentedVectors",
    "merge_hits",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Part:
    """One segment in a version: which of its rows are live and where they start globally."""

    segment: LoadedSegment
    live: np.ndarray | None  # ascending local rows that are live; None: all of them
    offset: int

    @property
    def n_live(self) -> int:
        return self.segment.size if self.live is None else len(self.live)

    def local(self, rows: np.ndarray) -> np.ndarray:
        """Global rows of this part -> its local rows."""
        shifted = rows - self.offset
        return shifted if self.live is None else self.live[shifted]

    def to_global(self, local: np.ndarray) -> np.ndarray:
        """Local rows (``-1`` padding allowed) -> global rows; deleted rows map to ``-1``."""
        if self.live is None:
            return np.where(local >= 0, local + self.offset, -1)
        if not len(self.live):
            return np.full_like(local, -1)
        position = np.minimum(np.searchsorted(self.live, np.maximum(local, 0)), len(self.live) - 1)
        found = (local >= 0) & (self.live[position] == local)
        return np.where(found, position + self.offset, -1)

    def mask(self, allowed: np.ndarray | None) -> np.ndarray | None:
        """A mask over the segment's local rows: live and (when given) allowed; None: every row."""
        if allowed is None:
            if self.live is None:
                return None
            out = np.zeros(self.segment.size, bool)
            out[self.live] = True
            return out
        chunk = allowed[self.offset : self.offset + self.n_live]
        if self.live is None:
            return chunk
        out = np.zeros(self.segment.size, bool)
        out[self.live] = chunk
        return out


class RowSpace:
    """Global row -> (part, local row)."""

    def __init__(self, parts: Sequence[Part]) -> None:
        self.parts = list(parts)
        self.starts = np.array([p.offset for p in self.parts], np.int64)
        self.size = sum(p.n_live for p in self.parts)

    def split(self, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(part index, positions in rows, local rows)`` for each part that ``rows`` touch."""
        rows = np.asarray(rows, np.int64)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out = []
        for p in np.unique(which):
            positions = np.flatnonzero(which == p)
            out.append((int(p), positions, self.parts[p].local(rows[positions])))
        return out

    def locate(self, row: int) -> tuple[Part, int]:
        if not 0 <= row < self.size:
            raise IndexError(row)
        p = int(np.searchsorted(self.starts, row, side="right")) - 1
        part = self.parts[p]
        return part, int(part.local(np.array([row]))[0])


class SegmentedVectors:
    """The live rows of several memory-mapped matrices, gathered on indexing."""

    def __init__(self, space: RowSpace, matrices: Sequence[np.ndarray], dim: int) -> None:
        self.space = space
        self.matrices = list(matrices)
        self.shape = (space.size, dim)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:  # noqa: ANN401 - an int, a slice, or rows
        if isinstance(key, (int, np.integer)):
            part, local = self.space.locate(int(key) if key >= 0 else int(key) + self.shape[0])
            return np.asarray(self.matrices[self.space.parts.index(part)][local])
        rows = np.arange(self.shape[0])[key] if isinstance(key, slice) else np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        out = np.empty((len(rows), self.shape[1]), np.float32)
        for p, positions, local in self.space.split(rows):
            out[positions] = self.matrices[p][local]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:  # noqa: ANN401 - numpy protocol
        out = self[np.arange(self.shape[0])]
        return out if dtype is None else out.astype(dtype, copy=False)


def merge_hits(results: Sequence[tuple[np.ndarray, np.ndarray]], n_queries: int, k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of several ``D, I`` results per query (exact: every candidate is compared)."""
    if not results:
        return np.full((n_queries, k), -np.inf, np.float32), np.full((n_queries, k), -1, np.int64)
    if len(results) == 1 and results[0][0].shape[1] >= k:
        D, I = results[0]
        return D[:, :k], I[:, :k]
    D = np.hstack([r[0] for r in results])
    I = np.hstack([r[1] for r in results])
    D = np.where(I >= 0, D, -np.inf)
    order = np.argsort(-D, axis=1, kind="stable")[:, :k]
    D, I = np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)
    if D.shape[1] < k:
        pad = k - D.shape[1]
        D = np.hstack([D, np.full((n_queries, pad), -np.inf, np.float32)])
        I = np.hstack([I, np.full((n_queries, pad), -1, np.int64)])
    return D.astype(np.float32, copy=False), I


class ExactIndex:
    """Exact search over memory-mapped vectors, for segments too small to need an index: no copy
    of the vectors is held."""

    factory = "Flat"
    exact = True
    params: dict[str, int] = {}

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    @property
    def ntotal(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, effort: Effort = TUNED
               ) -> tuple[np.ndarray, np.ndarray]:
        return exact_scan(self.vectors, queries, max(1, min(k, max(self.ntotal, 1))),
                          None if allowed is None else np.flatnonzero(allowed))


class SegmentedIndex:
    """``search`` over every part, merged; the interface strategies use of ``VectorIndex``."""

    def __init__(self, space: RowSpace, indexes: Sequence[VectorIndex | ExactIndex]) -> None:
        self.space = space
        self.indexes = list(indexes)
        self.exact = all(i.exact for i in self.indexes)
        self.factory = "+".join(sorted({i.factory for i in self.indexes})) or "Flat"
        self.params: dict[str, int] = {}

    @property
    def ntotal(self) -> int:
        return self.space.size

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, effort: Effort = TUNED
               ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, max(self.ntotal, 1)))
        results = []
        for part, index in zip(self.space.parts, self.indexes):
            mask = part.mask(allowed)
            if mask is not None and not mask.any():
                continue
            D, I = index.search(q, k, mask, effort)
            results.append((D, part.to_global(I)))
        return merge_hits(results, len(q), k)


@dataclasses.dataclass(frozen=True)
class _ClassPart:
    """A class's rows in one part: local rows (all, ascending), which are live, and where its live
    rows sit in the class's global row list."""

    part: int
    local_rows: np.ndarray
    live: np.ndarray  # bool over local_rows
    start: int
    segment_code: int | None  # the class's code in the segment's class search, when it has one


class SegmentedClasses:
    """Per-class search across parts: the ``ClassSearch`` interface ``balanced`` uses."""

    def __init__(self, space: RowSpace, label_names: Sequence[str], part_codes: Sequence[np.ndarray],
                 class_indexes: Sequence[ClassSearch | None], vectors: Sequence[np.ndarray],
                 segment_labels: Sequence[Sequence[str]]) -> None:
        self.space = space
        self.vectors = list(vectors)
        self.class_indexes = list(class_indexes)
        n = len(label_names)
        self.rows: list[np.ndarray] = []
        self._parts: list[list[_ClassPart]] = []
        per_class_rows: list[list[np.ndarray]] = [[] for _ in range(n)]
        per_class_parts: list[list[_ClassPart]] = [[] for _ in range(n)]
        counts = [0] * n
        for p, (part, codes) in enumerate(zip(space.parts, part_codes)):
            # codes: global label code of every local row of the segment
            lookup = {name: i for i, name in enumerate(segment_labels[p])}
            live_mask = part.mask(None)
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.arange(n + 1))
            for c in range(n):
                local_rows = np.sort(order[bounds[c] : bounds[c + 1]]).astype(np.int64)
                if not len(local_rows):
                    continue
                live = np.ones(len(local_rows), bool) if live_mask is None else live_mask[local_rows]
                live_local = local_rows[live]
                per_class_rows[c].append(part.to_global(live_local))
                per_class_parts[c].append(_ClassPart(p, local_rows, live, counts[c], lookup.get(label_names[c])))
                counts[c] += len(live_local)
        self.rows = [np.concatenate(r) if r else np.empty(0, np.int64) for r in per_class_rows]
        self._parts = per_class_parts
        self.stats: dict[str, Any] = {"classes": n, "segments": len(space.parts)}

    @property
    def approximate(self) -> list[int]:
        return []

    def search(self, code: int, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               effort: Effort = TUNED) -> tuple[np.ndarray, np.ndarray]:
        """``D, I`` of the top ``k`` live rows of class ``code`` (``allowed``: a mask over
        ``rows[code]``); ``I`` holds global rows."""
        return self.search_many([code], queries, k, {code: allowed} if allowed is not None else None,
                                effort=effort)[code]

    def search_many(self, codes: Sequence[int], queries: np.ndarray, k: int,
                    allowed: Mapping[int, np.ndarray] | None = None, *, needed: int | None = None,
                    effort: Effort = TUNED) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per part, every class at once: one ``search_many`` of the part's class search, or one
        exact scan of the part's rows of those classes; then each class's parts merged."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        allowed = allowed or {}
        found: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {code: [] for code in dict.fromkeys(codes)}
        by_part: dict[int, list[tuple[int, _ClassPart, np.ndarray]]] = {}
        for code in found:
            mask = allowed.get(code)
            for cp in self._parts[code]:
                n_live = int(cp.live.sum())
                keep = cp.live.copy()
                if mask is not None and n_live:
                    keep[cp.live] = mask[cp.start : cp.start + n_live]
                if keep.any():
                    by_part.setdefault(cp.part, []).append((code, cp, keep))
        for p, entries in by_part.items():
            part, classes = self.space.parts[p], self.class_indexes[p]
            has_index = [classes is not None and cp.segment_code is not None for _, cp, _ in entries]
            indexed = [e for e, yes in zip(entries, has_index) if yes]
            if indexed:
                assert classes is not None
                masks = {cp.segment_code: keep for _, cp, keep in indexed if not keep.all()}
                hits = classes.search_many([cp.segment_code for _, cp, _ in indexed], q, k, masks,
                                           needed=needed, effort=effort)
                for code, cp, _ in indexed:
                    D, I = hits[cp.segment_code]
                    found[code].append((D, part.to_global(I)))
            scanned = [(c, cp.local_rows[keep]) for (c, cp, keep), yes in zip(entries, has_index) if not yes]
            if sum(len(rows) for _, rows in scanned) <= EXACT_SUBSET_ROWS:
                hits_of = _scan_classes(self.vectors[p], q, k, scanned)
            else:  # a large part without a class search (an adapter space from before its index): class by class
                hits_of = ((c, *exact_scan(self.vectors[p], q, k, rows)) for c, rows in scanned)
            for code, D, I in hits_of:
                found[code].append((D, part.to_global(I)))
        return {code: merge_hits(results, len(q), k) for code, results in found.items()}


def _scan_classes(vectors: np.ndarray, q: np.ndarray, k: int, classes: list[tuple[int, np.ndarray]]
                  ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Exact top ``k`` of each class's ``rows`` of one small segment, from one product with all of them."""
    if not classes:
        return
    rows = np.concatenate([r for _, r in classes])
    scores = q @ np.asarray(vectors[rows], dtype=np.float32).T
    start = 0
    for code, members in classes:
        block = scores[:, start : start + len(members)]
        start += len(members)
        top = min(k, len(members))
        best = np.argpartition(-block, top - 1, axis=1)[:, :top] if top < len(members) else np.broadcast_to(
            np.arange(len(members)), (len(q), len(members)))
        D = np.take_along_axis(block, best, axis=1)
        order = np.argsort(-D, axis=1, kind="stable")
        yield code, np.take_along_axis(D, order, axis=1).astype(np.float32), members[np.take_along_axis(best, order, axis=1)]


class ItemColumn:
    """One item field over the live rows of every part, read row by row."""

    def __init__(self, space: RowSpace, field: str) -> None:
        self.space = space
        self.field = field

    def __len__(self) -> int:
        return self.space.size

    def __getitem__(self, row: int) -> Any:  # noqa: ANN401 - the field's value
        part, local = self.space.locate(int(row) if row >= 0 else int(row) + self.space.size)
        return part.segment.items.value(self.field, local)

    def __iter__(self) -> Iterator[Any]:
        for part in self.space.parts:
            values = part.segment.items.column(self.field).to_pylist()
            rows = range(len(values)) if part.live is None else part.live
            for r in rows:
                yield values[r]

    def __eq__(self, other: object) -> bool:
        # Compares like the tuple it stands for (whole columns: for tests and tools, not requests).
        if isinstance(other, (ItemColumn, tuple, list)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class IdLookup:
    """Item id -> global row, through each segment's id hashes (no dict of every id is built)."""

    def __init__(self, space: RowSpace) -> None:
        self.space = space

    def rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """The row of each id (``-1`` where the version does not hold it), looked up in one pass
        over the segments, newest first (an id written again lives in the newest segment)."""
        rows = np.full(len(item_ids), -1, np.int64)
        if not len(item_ids):
            return rows
        digests = id_hashes(item_ids)
        pending = np.arange(len(item_ids))
        for part in reversed(self.space.parts):
            if not len(pending):
                break
            hashes = part.segment.id_table[:, 0]
            lo = np.searchsorted(hashes, digests[pending], side="left")
            hi = np.searchsorted(hashes, digests[pending], side="right")
            for j in np.flatnonzero(hi > lo):
                wanted = item_ids[pending[j]]
                for local in part.segment.id_table[lo[j]:hi[j], 1]:
                    if part.segment.items.value("item_id", int(local)) == wanted:
                        row = int(part.to_global(np.array([int(local)], np.int64))[0])
                        if row >= 0:
                            rows[pending[j]] = row
                        break
            pending = pending[rows[pending] < 0]
        return rows

    def get(self, item_id: str, default: int | None = None) -> int | None:
        if not isinstance(item_id, str):
            return default
        row = int(self.rows_of([item_id])[0])
        return row if row >= 0 else default

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.get(item_id) is not None

    def __getitem__(self, item_id: str) -> int:
        row = self.get(item_id)
        if row is None:
            raise KeyError(item_id)
        return row
