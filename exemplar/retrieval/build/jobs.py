"""Jobs: long work (builds, adapter training, compaction) run in a background thread, recorded in
the catalog with state, progress, result and errors, cancellable from any replica, and taken over
after a crash.

A job is claimed by one replica under a lease timed by the database: the replica that runs it
renews the lease every ``lease_s / 4`` (the keeper thread). A replica whose lease ran out (it died,
or stalled) loses the job to the next replica whose keeper finds it (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL: two replicas never claim one job); each claim bumps the job's attempt number, and every
write a job makes (progress, its version commit, its end) is checked against that number, so the
old worker's late commit is refused. A job of a kind nobody can resume is marked failed instead.
"""

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
from exemplar.retrieval.store.catalog import Catalog, Fence

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
    attempt: int = 1  # claims of the job: above 1 after a replica that held it stopped
    owner: str | None = None  # the replica that holds (or last held) it


def _record(row: Any) -> JobRecord:  # noqa: ANN401 - sqlite3.Row
    return JobRecord(
        id=row["id"], kind=row["kind"], pool=row["pool"], state=row["state"], params=json.loads(row["params"]),
        progress=json.loads(row["progress"]), result=json.loads(row["result"]) if row["result"] else None,
        errors=json.loads(row["errors"]), created_at=row["created_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], attempt=max(1, int(row["attempt"] or 0)), owner=row["owner"],
    )


class JobContext:
    """Handed to a job's work: report progress, check for cancellation."""

    def __init__(self, service: "JobService", fence: Fence) -> None:
        self._service = service
        self.job_id = fence.job_id
        self.fence = fence  # what the job's commit is checked against
        self._last_write = 0.0

    def committed_version(self) -> int | None:
        """The version an earlier attempt of this job committed (its work is then done)."""
        return self._service.committed_version(self.job_id)

    def cancelled(self) -> bool:
        return self._service._cancel_requested(self.job_id)

    def check(self) -> None:
        if self.cancelled():
            raise JobCancelled()

    def progress(self, *, force: bool = False, **values: Any) -> None:
        now = time.monotonic()
        if force or now - self._last_write >= 0.25:  # progress is for people; do not hammer the catalog
            self._last_write = now
            self._service._write(self.fence, progress=values)


Work = Callable[[JobContext], dict[str, Any]]


Resumer = Callable[[dict[str, Any]], Work]


class JobService:
    """Jobs recorded in ``catalog`` and run in this process's threads. ``start`` runs the keeper:
    it renews the leases of this process's jobs, hands them cancellations asked of other
    replicas, stops those whose lease was lost, and takes over jobs whose replica died."""

    def __init__(self, catalog: Catalog, *, workers: int = 1) -> None:
        self.catalog = catalog
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="exemplar-job")
        self._cancel: set[str] = set()
        self._running: dict[str, Fence] = {}  # this process's jobs, queued or running
        self._lock = threading.Lock()
        self._resumers: dict[str, Resumer] = {}
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def start(self, resumers: dict[str, Resumer] | None = None) -> list[str]:
        """Take over what dead replicas left (now, and every keeper round from here on) and start
        the keeper. Returns the ids taken over now."""
        self._resumers = dict(resumers or {})
        taken = self.recover(self._resumers)
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="exemplar-job-keeper", daemon=True)
            self._keeper.start()
        return taken

    def close(self, wait: bool = True) -> None:
        self._stop.set()
        with self._lock:
            self._cancel.update(self._running)
        self._executor.shutdown(wait=wait, cancel_futures=True)
        if self._keeper is not None:
            self._keeper.join(10.0)

    def recover(self, resumers: dict[str, Resumer] | None = None) -> list[str]:
        """Take over jobs whose lease ran out (their replica died): those of a kind in ``resumers``
        run again here (they resume from their own checkpoints); the others are marked failed.
        Returns the ids taken over."""
        catalog = self.catalog
        claimed: list[tuple[Fence, str, dict[str, Any]]] = []
        with catalog.transaction(serialised=False) as tx:
            rows = tx.execute(
                "SELECT id, kind, params, pid, owner, lease_until, attempt FROM jobs "
                "WHERE state IN ('queued', 'running')" + catalog.db.skip_locked).fetchall()
            if not rows:
                return []
            now = float(tx.execute(f"SELECT {catalog.db.now}").fetchone()[0])
            for row in rows:
                if catalog.held(row, now):
                    continue
                if resumers and row["kind"] in resumers:
                    updated = tx.execute(
                        f"UPDATE jobs SET owner = ?, pid = ?, attempt = attempt + 1, lease_until = {catalog.db.now} + ?, "
                        "state = 'queued' WHERE id = ? AND attempt = ? AND state IN ('queued', 'running')",
                        (catalog.replica_id, os.getpid(), catalog.lease_s, row["id"], row["attempt"])).rowcount
                    if updated:
                        fence = Fence(row["id"], catalog.replica_id, row["attempt"] + 1)
                        claimed.append((fence, row["kind"], json.loads(row["params"])))
                else:
                    tx.execute(
                        "UPDATE jobs SET state = 'failed', finished_at = ?, pid = NULL, lease_until = NULL, errors = ? "
                        "WHERE id = ? AND attempt = ? AND state IN ('queued', 'running')",
                        (time.time(), json.dumps([{"message": "interrupted: the process running it stopped"}]),
                         row["id"], row["attempt"]))
        for fence, kind, params in claimed:
            log.warning("job %s (%s): its replica stopped; taken over as attempt %d", fence.job_id, kind, fence.attempt)
            self._enqueue(fence, resumers[kind](params))  # type: ignore[index]
        return [fence.job_id for fence, _, _ in claimed]

    @overload
    def submit(self, kind: str, pool: str, params: dict[str, Any], work: Work) -> JobRecord: ...

    @overload
    def submit(self, kind: str, pool: str, params: dict[str, Any], work: Work, *, unique: bool) -> JobRecord | None: ...

    def submit(self, kind: str, pool: str, params: dict[str, Any], work: Work, *, unique: bool = False) -> JobRecord | None:
        """Record a job and run it here; with ``unique``, only when no job of that kind is queued or
        running for the pool in any process (None otherwise)."""
        job_id = uuid.uuid4().hex
        catalog = self.catalog
        with catalog.transaction() as conn:
            if unique and conn.execute(
                "SELECT 1 FROM jobs WHERE kind = ? AND pool = ? AND state IN ('queued', 'running')", (kind, pool)
            ).fetchone():
                return None
            conn.execute(
                "INSERT INTO jobs (id, kind, pool, state, params, pid, owner, attempt, lease_until, created_at) "
                f"VALUES (?,?,?,?,?,?,?,1,{catalog.db.now} + ?,?)",
                (job_id, kind, pool, "queued", json.dumps(params), os.getpid(), catalog.replica_id, catalog.lease_s,
                 time.time()),
            )
        self._enqueue(Fence(job_id, catalog.replica_id, 1), work)
        return self.get(job_id)

    def get(self, job_id: str) -> JobRecord:
        rows = self.catalog.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound(f"job {job_id!r} does not exist", param="job")
        return _record(rows[0])

    def committed_version(self, job_id: str) -> int | None:
        rows = self.catalog.query("SELECT committed_version FROM jobs WHERE id = ?", (job_id,))
        return rows[0][0] if rows else None

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
        """Cancel a job, whichever replica runs it: a queued one ends now, a running one when its
        work next checks (on another replica: after that replica's next keeper round)."""
        job = self.get(job_id)
        if job.state in _FINISHED:
            raise Conflict(f"job {job_id!r} already {job.state}", param="job")
        with self._lock:
            self._cancel.add(job_id)
        with self.catalog.transaction(serialised=False) as tx:
            tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
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

    def _enqueue(self, fence: Fence, work: Work) -> None:
        with self._lock:
            self._running[fence.job_id] = fence
        self._executor.submit(self._run, fence, work)

    def _keep(self) -> None:
        pause = max(self.catalog.lease_s / 4, 0.1)
        while not self._stop.wait(pause):
            try:
                self._renew()
                if self._resumers:
                    self.recover(self._resumers)
            except Exception:  # noqa: BLE001 - e.g. the database restarting: try again next round
                log.warning("the job keeper's round failed; trying again in %.2f s", pause, exc_info=True)

    def _renew(self) -> None:
        """Renew this process's leases; stop the jobs whose lease was lost or whose cancellation
        another replica recorded."""
        with self._lock:
            mine = dict(self._running)
        if not mine:
            return
        catalog = self.catalog
        with catalog.transaction(serialised=False) as tx:
            tx.execute(f"UPDATE jobs SET lease_until = {catalog.db.now} + ? "
                       "WHERE owner = ? AND state IN ('queued', 'running')", (catalog.lease_s, catalog.replica_id))
            rows = {r["id"]: r for r in tx.execute(
                f"SELECT id, owner, attempt, state, cancel_requested FROM jobs WHERE id IN ({','.join('?' * len(mine))})",
                tuple(mine)).fetchall()}
        stop = []
        for job_id, fence in mine.items():
            row = rows.get(job_id)
            if row is None or row["owner"] != fence.owner or row["attempt"] != fence.attempt:
                log.warning("job %s: its lease was lost to another replica; stopping it here", job_id)
                stop.append(job_id)
            elif row["cancel_requested"]:
                stop.append(job_id)
        if stop:
            with self._lock:
                self._cancel.update(stop)

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

    def _write(self, fence: Fence, **fields: Any) -> None:
        sets, args = self._assignments(fields)
        with self.catalog.transaction(serialised=False) as conn:
            conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND owner = ? AND attempt = ?",
                         (*args, fence.job_id, fence.owner, fence.attempt))

    def _finish(self, job_id: str, state: str, *, only_from: tuple[str, ...] = ("queued", "running"),
                fence: Fence | None = None, **fields: Any) -> bool:
        # State and result land in one statement: a poller that sees "succeeded" must also see the result.
        sets, args = self._assignments(fields)
        placeholders = ",".join("?" * len(only_from))
        fenced = " AND owner = ? AND attempt = ?" if fence is not None else ""
        with self.catalog.transaction() as conn:
            updated = conn.execute(
                f"UPDATE jobs SET {', '.join(['state = ?', 'finished_at = ?', 'pid = NULL', 'lease_until = NULL', *sets])} "
                f"WHERE id = ? AND state IN ({placeholders}){fenced}",
                (state, time.time(), *args, job_id, *only_from,
                 *((fence.owner, fence.attempt) if fence is not None else ())),
            ).rowcount
        return bool(updated)

    def _run(self, fence: Fence, work: Work) -> None:
        job_id = fence.job_id
        try:
            with self.catalog.transaction(serialised=False) as conn:
                started = conn.execute(
                    "UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?) "
                    "WHERE id = ? AND state = 'queued' AND owner = ? AND attempt = ?",
                    (time.time(), job_id, fence.owner, fence.attempt),
                ).rowcount
            if not started:
                return  # cancelled while queued, or taken over meanwhile
            self._execute(fence, work)
        finally:
            with self._lock:
                self._cancel.discard(job_id)
                self._running.pop(job_id, None)

    def _execute(self, fence: Fence, work: Work) -> None:
        job_id = fence.job_id
        try:
            result = work(JobContext(self, fence))
        except JobCancelled:
            self._finish(job_id, "cancelled", fence=fence)
        except ExemplarError as exc:
            self._finish(job_id, "failed", fence=fence,
                         errors=[{"type": exc.type, "message": exc.message, "param": exc.param}])
        except Exception:
            log.exception("job %s failed", job_id)
            self._finish(job_id, "failed", fence=fence,
                         errors=[{"type": "internal_error", "message": f"internal error (job {job_id})"}])
        else:
            if not self._finish(job_id, "succeeded", fence=fence, result=result):
                log.warning("job %s: finished here after another replica took it over; its end is not recorded",
                            job_id)
