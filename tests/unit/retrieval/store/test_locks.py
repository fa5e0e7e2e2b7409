"""The pool store's write lock hands itself over in arrival order."""

from __future__ import annotations

import threading
import time

from exemplar.retrieval.store.locks import FairLock


def test_waiters_acquire_in_arrival_order() -> None:
    lock = FairLock()
    order: list[int] = []
    holder_in = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with lock:
            holder_in.set()
            release.wait(timeout=30)

    def waiter(i: int) -> None:
        with lock:
            order.append(i)

    first = threading.Thread(target=holder)
    first.start()
    assert holder_in.wait(timeout=30)
    waiters = []
    for i in range(8):
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        waiters.append(t)
        deadline = time.monotonic() + 10
        while lock._next_ticket < i + 2 and time.monotonic() < deadline:  # noqa: SLF001 - wait until queued
            time.sleep(0.001)
    release.set()
    for t in [first, *waiters]:
        t.join(timeout=30)
    assert order == list(range(8))


def test_an_exception_inside_releases_the_lock() -> None:
    lock = FairLock()
    try:
        with lock:
            raise ValueError("x")
    except ValueError:
        pass
    acquired = threading.Event()

    def take() -> None:
        with lock:
            acquired.set()

    t = threading.Thread(target=take)
    t.start()
    t.join(timeout=10)
    assert acquired.is_set()
