"""A first-in, first-out mutex for the pool store's writes."""

from __future__ import annotations

import threading
from types import TracebackType

__all__ = ["FairLock"]


class FairLock:
    """Waiters acquire in arrival order. ``threading.Lock`` makes no such promise, and under a
    steady stream of item additions an activation (a rollback) could wait behind writer after
    writer, long enough for the version it asked for to be pruned meanwhile (seen in the soak)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0

    def __enter__(self) -> "FairLock":
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._cond.wait()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()
