"""Handles on server jobs (builds, adapters, compactions) and waiting for them to finish."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from exemplar_client._errors import JobFailedError, JobTimeoutError
from exemplar_client.models import JobOut

if TYPE_CHECKING:
    from exemplar_client._async_client import AsyncExemplar
    from exemplar_client._client import Exemplar

__all__ = ["AsyncJob", "Job", "ProgressCallback"]

ProgressCallback = Callable[[JobOut], Any]

DEFAULT_WAIT_S = 600.0
DEFAULT_POLL_S = 0.5


class _Watch:
    """One ``wait``: reports progress, decides when it is over, and how long to sleep meanwhile.
    Bounded by ``timeout``: every step either ends the wait or sleeps less than what is left."""

    def __init__(self, timeout: float, poll_interval: float, progress: Optional[ProgressCallback]) -> None:
        if not timeout > 0 or not poll_interval > 0:
            raise ValueError("timeout and poll_interval must be positive")
        self.deadline = time.monotonic() + timeout
        self.timeout, self.poll_interval, self.progress = timeout, poll_interval, progress
        self._seen: Any = None

    def step(self, job: JobOut, raise_on_failure: bool) -> Optional[float]:
        """None when the job is over (its final record is ``job``); otherwise the seconds to sleep."""
        seen = (job.state, job.progress)
        if self.progress is not None and seen != self._seen:  # only changes: the callback may print
            self.progress(job)
        self._seen = seen
        if job.finished:
            if job.state != "succeeded" and raise_on_failure:
                detail = "; ".join(str(e.get("message", e)) for e in job.errors) or "no error recorded"
                raise JobFailedError(f"job {job.id} ({job.kind} of pool {job.pool!r}) {job.state}: {detail}", job=job)
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise JobTimeoutError(f"job {job.id} still {job.state} after {self.timeout:g} s", job=job)
        return min(self.poll_interval, left)


class Job:
    """A server job. ``record`` is its state as last read; ``wait`` polls until it finishes."""

    def __init__(self, client: "Exemplar", record: JobOut) -> None:
        self._client = client
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    def __repr__(self) -> str:
        return f"<Job {self.record.id} {self.record.kind} {self.record.pool!r} {self.record.state}>"

    def refresh(self) -> JobOut:
        self.record = self._client.get_job(self.record.id)
        return self.record

    def cancel(self) -> JobOut:
        self.record = self._client.cancel_job(self.record.id)
        return self.record

    def wait(self, *, progress: Optional[ProgressCallback] = None, timeout: float = DEFAULT_WAIT_S,
             poll_interval: float = DEFAULT_POLL_S, raise_on_failure: bool = True) -> JobOut:
        """Poll until the job finishes; returns its final record.

        ``progress(job)`` is called with the record whenever its state or progress changed.
        Raises ``JobFailedError`` when it ends failed or cancelled (unless ``raise_on_failure`` is
        False), ``JobTimeoutError`` after ``timeout`` seconds (the job goes on)."""
        watch = _Watch(timeout, poll_interval, progress)
        record = self.record
        while (delay := watch.step(record, raise_on_failure)) is not None:
            time.sleep(delay)
            record = self.refresh()
        return record


class AsyncJob:
    """``Job`` for ``AsyncExemplar``: the same surface, awaited."""

    def __init__(self, client: "AsyncExemplar", record: JobOut) -> None:
        self._client = client
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    def __repr__(self) -> str:
        return f"<AsyncJob {self.record.id} {self.record.kind} {self.record.pool!r} {self.record.state}>"

    async def refresh(self) -> JobOut:
        self.record = await self._client.get_job(self.record.id)
        return self.record

    async def cancel(self) -> JobOut:
        self.record = await self._client.cancel_job(self.record.id)
        return self.record

    async def wait(self, *, progress: Optional[ProgressCallback] = None, timeout: float = DEFAULT_WAIT_S,
                   poll_interval: float = DEFAULT_POLL_S, raise_on_failure: bool = True) -> JobOut:
        """See ``Job.wait``."""
        watch = _Watch(timeout, poll_interval, progress)
        record = self.record
        while (delay := watch.step(record, raise_on_failure)) is not None:
            await asyncio.sleep(delay)
            record = await self.refresh()
        return record
