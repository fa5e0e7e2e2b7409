"""Micro-batching: concurrent searches of one index run as one FAISS call.

Leader/follower, with no timer: a search that finds the index idle runs at once (so a lone request
waits for nothing); searches that arrive while it runs queue up, and when it finishes the first of
them leads the next call with the whole queue stacked into one query matrix. FAISS then scores the
batch with BLAS (the coarse quantizer of an IVF index, or a Flat scan) instead of one query at a
time, and pays its per-call overhead once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

__all__ = ["SearchBatcher"]

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


class _Slot:
    __slots__ = ("D", "I", "done", "error", "k", "lead", "queries")

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries = queries
        self.k = k
        self.done = threading.Event()
        self.lead = False
        self.D: np.ndarray | None = None
        self.I: np.ndarray | None = None
        self.error: BaseException | None = None


class SearchBatcher:
    """Runs ``search(queries, k)`` for concurrent callers, stacking those that arrive while a call
    is in flight into the next one (at most ``max_queries`` rows per call)."""

    def __init__(self, search: Search, max_queries: int = 1024) -> None:
        self._search = search
        self.max_queries = max_queries
        self._lock = threading.Lock()
        self._queue: list[_Slot] = []
        self._busy = False
        self.calls = 0  # FAISS calls made (for tests)
        self.batched = 0  # searches that shared a call with another

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        slot = _Slot(queries, k)
        with self._lock:
            self._queue.append(slot)
            lead = not self._busy
            self._busy = True
        if not lead:
            slot.done.wait()
            if slot.lead:  # handed the lead: run the queue that built up behind the last call
                self._lead()
                slot.done.wait()
        else:
            self._lead()
            slot.done.wait()
        if slot.error is not None:
            raise slot.error
        assert slot.D is not None and slot.I is not None
        return slot.D, slot.I

    def _lead(self) -> None:
        with self._lock:
            batch, rows = [], 0
            while self._queue and (not batch or rows + len(self._queue[0].queries) <= self.max_queries):
                slot = self._queue.pop(0)
                batch.append(slot)
                rows += len(slot.queries)
        try:
            self._run(batch)
        finally:
            with self._lock:
                if self._queue:  # the next caller in line leads the next call
                    successor = self._queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._busy = False
            for slot in batch:
                slot.done.set()

    def _run(self, batch: list[_Slot]) -> None:
        k = max(slot.k for slot in batch)
        try:
            if len(batch) == 1:
                D, I = self._search(batch[0].queries, k)
            else:
                D, I = self._search(np.ascontiguousarray(np.vstack([s.queries for s in batch])), k)
                self.batched += len(batch)
            self.calls += 1
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets the failure
            for slot in batch:
                slot.error = exc
            return
        start = 0
        for slot in batch:
            end = start + len(slot.queries)
            slot.D, slot.I = D[start:end, : slot.k], I[start:end, : slot.k]
            start = end
