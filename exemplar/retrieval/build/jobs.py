"""Jobs: long work (builds, adapter training) run in a background thread, recorded in the catalog
with state, progress, result and errors, cancellable, and resumed or failed after a crash."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, overload

from exemplar.errors import Conflict, ExemplarError, NotFound
from exemplar.retrieval.store.catalog import Catalog, pid_alive

__all__ = ["JobCancelled", "JobContext", "JobRecord", "JobService", "JobState"]

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
_FINISHED = ("succeeded", "failed", "cancelled")


class JobCancelled(Exception):
    """Raised inside a job's work when it notices its cancellation."""


@dataclasses.dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    pool: str
    state: JobState
    params: dict[str, Any]
    progress: dict[str, Any]
    result: dict[str, Any] | None
    errors: list[dict[str, Any]]
    created_at: float
    started_at: float | None
    finished_at: float | None


def _record(row: Any) -> JobRecord:  # noqa: ANN401 - sqlite3.Row
    return JobRecord(
        id=row["id"], kind=row["kind"], pool=row["pool"], state=row["state"], params=json.loads(row["params"]),
        progress=json.loads(row["progress"]), result=json.loads(row["result"]) if row["result"] else None,
        errors=json.loads(row["errors"]), created_at=row["created_at"], started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


class JobContext:
    """Handed to a job's work: report progress, check for cancellation."""

    def __init__(self, service: "JobService", job_id: str) -> None:
        self._service = service
        self.job_id = job_id
        self._last_write = 0.0

    def cancelled(self) -> bool:
        return self._service._cancel_requested(self.job_id)

    def check(self) -> None:
        if self.cancelled():
            raise JobCancelled()

    def progress(self, *, force: bool = False, **values: Any) -> None:
        now = time.monotonic()
        if force or now - self._last_write >= 0.25:  # progress is for people; do not hammer the catalog
            self._last_write = now
            self._service._write(self.job_id, progress=values)


Work = Callable[[JobContext], dict[str, Any]]


class JobService:
    def __init__(self, catalog: Catalog, *, workers: int = 1) -> None:
        self.catalog = catalog
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="exemplar-job")
        self._cancel: set[str] = set()
        self._lock = threading.Lock()

    def close(self, wait: bool = True) -> None:
        with self._lock:
            self._cancel.update(j.id for j in self.list(states=("queued", "running")))
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def recover(self, resumers: dict[str, Callable[[dict[str, Any]], Work]] | None = None) -> list[str]:
        """Take over jobs whose process died: those of a kind in ``resumers`` run again here (they
        resume from their own checkpoints); the others are marked failed. Returns the resumed ids."""
        resumed = []
        for row in self.catalog.query("SELECT id, kind, params, pid FROM jobs WHERE state IN ('queued', 'running')"):
            pid = row["pid"]
            if pid is not None and (pid == os.getpid() or pid_alive(pid)):
                continue
            if resumers and row["kind"] in resumers:
                with self.catalog.transaction() as conn:  # claim it: only one process wins
                    claimed = conn.execute(
                        "UPDATE jobs SET pid = ?, state = 'queued' WHERE id = ? AND pid IS ? "
                        "AND state IN ('queued', 'running')",
                        (os.getpid(), row["id"], pid),
                    ).rowcount
                if claimed:
                    self._executor.submit(self._run, row["id"], resumers[row["kind"]](json.loads(row["params"])))
                    resumed.append(row["id"])
            else:
                self._finish(row["id"], "failed", errors=[{"message": "interrupted: the process running it stopped"}])
        return resumed

    @overload
    def submit(self, kind: str, pool: str, params: dict[str, Any], work: Work) -> JobRecord: ...

    @overload
    def submit(self, kind: str, pool: str, params: dict[str, Any], work: Work, *, unique: bool) -> JobRecord | None: ...

    def submit(self, kind: str, pool: str, params: dict[str, Any], work: Work, *, unique: bool = False) -> JobRecord | None:
        """Record a job and run it here; with ``unique``, only when no job of that kind is queued or
        running for the pool in any process (None otherwise)."""
        job_id = uuid.uuid4().hex
        with self.catalog.transaction() as conn:
            if unique and conn.execute(
                "SELECT 1 FROM jobs WHERE kind = ? AND pool = ? AND state IN ('queued', 'running')", (kind, pool)
            ).fetchone():
                return None
            conn.execute(
                "INSERT INTO jobs (id, kind, pool, state, params, pid, created_at) VALUES (?,?,?,?,?,?,?)",
                (job_id, kind, pool, "queued", json.dumps(params), os.getpid(), time.time()),
            )
        self._executor.submit(self._run, job_id, work)
        return self.get(job_id)

    def get(self, job_id: str) -> JobRecord:
        rows = self.catalog.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound(f"job {job_id!r} does not exist", param="job")
        return _record(rows[0])

    def list(self, *, pool: str | None = None, states: tuple[str, ...] | None = None,
             kinds: tuple[str, ...] | None = None, limit: int = 100) -> list[JobRecord]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if kinds is not None:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += list(kinds)
        if pool is not None:
            sql += " AND pool = ?"
            args.append(pool)
        if states is not None:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        return [_record(r) for r in self.catalog.query(sql, args)]

    def cancel(self, job_id: str) -> JobRecord:
        job = self.get(job_id)
        if job.state in _FINISHED:
            raise Conflict(f"job {job_id!r} already {job.state}", param="job")
        with self._lock:
            self._cancel.add(job_id)
        if job.state == "queued":
            self._finish(job_id, "cancelled", only_from=("queued",))
        return self.get(job_id)

    def wait(self, job_id: str, timeout_s: float = 60.0) -> JobRecord:
        """Poll until the job finishes (for the CLI and tests)."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job.state in _FINISHED or time.monotonic() > deadline:
                return job
            time.sleep(0.05)

    # internals -----------------------------------------------------------------------------------

    def _cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancel

    @staticmethod
    def _assignments(fields: dict[str, Any]) -> tuple[list[str], list[Any]]:
        sets, args = [], []
        for name, value in fields.items():
            sets.append(f"{name} = ?")
            args.append(json.dumps(value) if name in ("progress", "result", "errors") else value)
        return sets, args

    def _write(self, job_id: str, **fields: Any) -> None:
        sets, args = self._assignments(fields)
        with self.catalog.transaction() as conn:
            conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))

    def _finish(self, job_id: str, state: str, *, only_from: tuple[str, ...] = ("queued", "running"), **fields: Any) -> bool:
        # State and result land in one statement: a poller that sees "succeeded" must also see the result.
        sets, args = self._assignments(fields)
        placeholders = ",".join("?" * len(only_from))
        with self.catalog.transaction() as conn:
            updated = conn.execute(
                f"UPDATE jobs SET {', '.join(['state = ?', 'finished_at = ?', 'pid = NULL', *sets])} "
                f"WHERE id = ? AND state IN ({placeholders})",
                (state, time.time(), *args, job_id, *only_from),
            ).rowcount
        return bool(updated)

    def _run(self, job_id: str, work: Work) -> None:
        with self.catalog.transaction() as conn:
            started = conn.execute(
                "UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?) WHERE id = ? AND state = 'queued'",
                (time.time(), job_id),
            ).rowcount
        if not started:
            return  # cancelled while queued
        try:
            result = work(JobContext(self, job_id))
        except JobCancelled:
            self._finish(job_id, "cancelled")
        except ExemplarError as exc:
            self._finish(job_id, "failed", errors=[{"type": exc.type, "message": exc.message, "param": exc.param}])
        except Exception:
            log.exception("job %s failed", job_id)
            self._finish(job_id, "failed", errors=[{"type": "internal_error", "message": f"internal error (job {job_id})"}])
        else:
            self._finish(job_id, "succeeded", result=result)
        finally:
            with self._lock:
                self._cancel.discard(job_id)
