"""The catalog: pools, items, versions, adapters, jobs and the replicas that serve them, in SQLite
(the embedded default) or PostgreSQL (replicas on several hosts), through ``store/database.py``.

Versions are immutable in content. A version is a manifest (JSON in ``versions.manifest``): the
segments it is made of and, per segment, the file of its deleted rows. Versions written before
segments existed have no manifest: their folder ``versions/<v>`` is their one segment, and their
item rows live in the ``items`` table (one row per content of an item, listed by ``uids.npy``).
A version row is reserved as ``building`` before its files are written and becomes ``ready`` in the
same transaction that records its items and, optionally, switches the pool's ``current`` pointer
(a compare-and-set on the pointer and the pool's revision, in the database).

Whether the process behind a building version, an adapter in training or a job still lives is
told by leases: each process that opens a store registers as a replica and renews its lease by a
heartbeat timed by the database's clock. On SQLite (one host by construction) a process id that no
longer exists also ends its lease at once, so a restarted server resumes without waiting it out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from exemplar.errors import Conflict, NotFound
from exemplar.retrieval.store.database import Database, Transaction, open_database
from exemplar.retrieval.store.migrations import migrate

log = logging.getLogger(__name__)

__all__ = [
    "AdapterRecord",
    "Catalog",
    "Fence",
    "ItemRow",
    "LeaseLost",
    "PoolRecord",
    "ReplicaRecord",
    "StaleBase",
    "VersionRecord",
    "pid_alive",
]

@dataclasses.dataclass(frozen=True)
class PoolRecord:
    id: int
    name: str
    encoder: str
    embed: str
    metric: str
    index: str
    dim: int
    current_version: int | None
    revision: int
    created_at: float
    # Vectors stored centred: less the mean of the pool's first write, then normalised (store/centring.py)
    centre: bool = False


@dataclasses.dataclass(frozen=True)
class AdapterRecord:
    id: int
    version: int
    state: str
    info: dict[str, Any]
    created_at: float


@dataclasses.dataclass(frozen=True)
class VersionRecord:
    version: int
    state: str
    size: int
    index: str
    source: str
    stats: dict[str, Any]
    created_at: float
    manifest: dict[str, Any] | None = None  # None: a version from before segments


@dataclasses.dataclass(frozen=True)
class ItemRow:
    uid: int
    item_id: str
    label: str | None
    text: str | None
    image: str | None
    media_root: str | None
    domain: str | None
    metadata: str | None  # JSON text, parsed only when a response needs it


def _pool(row: Any) -> PoolRecord:
    return PoolRecord(
        id=row["id"],
        name=row["name"],
        encoder=row["encoder"],
        embed=row["embed"],
        metric=row["metric"],
        index=row["index_spec"],
        dim=row["dim"],
        current_version=row["current_version"],
        revision=row["revision"],
        created_at=row["created_at"],
        centre=bool(row["centre"]),
    )


def _adapter(row: Any) -> AdapterRecord:
    return AdapterRecord(
        id=row["id"], version=row["version"], state=row["state"], info=json.loads(row["info"] or "{}"),
        created_at=row["created_at"],
    )


def _version(row: Any) -> VersionRecord:
    return VersionRecord(
        version=row["version"],
        state=row["state"],
        size=row["size"],
        index=row["index_spec"],
        source=row["source"],
        stats=json.loads(row["stats"] or "{}"),
        created_at=row["created_at"],
        manifest=json.loads(row["manifest"]) if row["manifest"] else None,
    )


@dataclasses.dataclass(frozen=True)
class ReplicaRecord:
    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    lease_until: float
    serving: dict[str, list[str]]  # pool id (as text) -> the segment names that replica has loaded


@dataclasses.dataclass(frozen=True)
class Fence:
    """A job's claim, checked by the commit it makes: refused once another replica took the job over."""

    job_id: str
    owner: str
    attempt: int


DEFAULT_LEASE_S = 10.0
"""How long a replica's claim on its jobs, builds and adapters outlives its last heartbeat."""


class Catalog:
    """The catalog of one data directory. ``url``: None for ``catalog.sqlite3`` in ``data_dir``,
    or ``postgresql://...`` shared by replicas on several hosts (see ``database.open_database``).
    Opening registers this process as a replica, leased for ``lease_s``; ``heartbeat`` renews it."""

    def __init__(self, path_or_url: Path | str | None = None, *, data_dir: Path | None = None,
                 lease_s: float = DEFAULT_LEASE_S) -> None:
        if isinstance(path_or_url, Path):
            self.db: Database = open_database(f"sqlite:///{path_or_url}", path_or_url.parent)
        else:
            self.db = open_database(path_or_url, data_dir or Path("."))
        self.lease_s = lease_s
        migrate(self.db)  # type: ignore[arg-type]
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        with self.transaction() as tx:
            tx.execute(
                f"INSERT INTO replicas (id, host, pid, started_at, heartbeat_at, lease_until) "
                f"VALUES (?, ?, ?, {self.db.now}, {self.db.now}, {self.db.now} + ?)",
                (self.replica_id, socket.gethostname(), os.getpid(), lease_s))

    @property
    def shared(self) -> bool:
        """Whether replicas on other hosts may share this catalog (PostgreSQL)."""
        return self.db.shared

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def close(self) -> None:
        try:
            with self.transaction() as tx:  # a clean stop hands its leases back at once
                tx.execute("DELETE FROM replicas WHERE id = ?", (self.replica_id,))
                tx.execute("UPDATE jobs SET lease_until = NULL WHERE owner = ?", (self.replica_id,))
        except Exception:  # noqa: BLE001 - closing must not fail; the lease then runs out by itself
            log.warning("could not hand back this replica's leases on close", exc_info=True)
        self.db.close()

    def transaction(self, *, serialised: bool = True) -> Any:  # noqa: ANN401 - a context manager of Transaction
        """A write transaction (``serialised``: one at a time across every process of the catalog)."""
        return self.db.transaction(serialised=serialised)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self.db.query(sql, args)

    def now(self) -> float:
        """The database's clock (epoch seconds): what leases are timed by."""
        return float(self.query(f"SELECT {self.db.now}")[0][0])

    def _changed(self, tx: Transaction, pool_id: int) -> None:
        self.db.notify(tx, str(pool_id))

    # pools ---------------------------------------------------------------------------------------

    def create_pool(self, *, name: str, encoder: str, embed: str, metric: str, index: str, dim: int,
                    centre: bool = False) -> PoolRecord:
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM pools WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"pool {name!r} already exists", param="name")
            conn.execute(
                "INSERT INTO pools (name, encoder, embed, metric, index_spec, dim, created_at, centre) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (name, encoder, embed, metric, index, dim, time.time(), int(centre)),
            )
        return self.pool(name)

    def pool(self, name: str) -> PoolRecord:
        rows = self.query("SELECT * FROM pools WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"pool {name!r} does not exist", param="pool")
        return _pool(rows[0])

    def pools(self) -> list[PoolRecord]:
        return [_pool(r) for r in self.query("SELECT * FROM pools ORDER BY name")]

    def delete_pool(self, name: str) -> PoolRecord:
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM pools WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"pool {name!r} does not exist", param="pool")
            conn.execute("DELETE FROM pools WHERE id = ?", (row["id"],))
            conn.execute("DELETE FROM retired WHERE pool_id = ?", (row["id"],))
            self._changed(conn, row["id"])
        return _pool(row)

    # versions ------------------------------------------------------------------------------------

    def versions(self, pool_id: int) -> list[VersionRecord]:
        rows = self.query("SELECT * FROM versions WHERE pool_id = ? ORDER BY version", (pool_id,))
        return [_version(r) for r in rows]

    def version(self, pool_id: int, version: int) -> VersionRecord:
        rows = self.query("SELECT * FROM versions WHERE pool_id = ? AND version = ?", (pool_id, version))
        if not rows:
            raise NotFound(f"version {version} does not exist", param="version")
        return _version(rows[0])

    def reserve_version(self, pool_id: int, *, new_items: int, source: str) -> tuple[int, int]:
        """Reserve the next version number and a range of ``new_items`` uids: ``(version, first_uid)``."""
        with self.transaction() as conn:
            row = conn.execute("SELECT next_uid FROM pools WHERE id = ?", (pool_id,)).fetchone()
            if row is None:
                raise NotFound("pool was deleted", param="pool")
            first_uid = row[0]
            version = conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE pool_id = ?", (pool_id,)
            ).fetchone()[0]
            conn.execute("UPDATE pools SET next_uid = next_uid + ? WHERE id = ?", (new_items, pool_id))
            conn.execute(
                "INSERT INTO versions (pool_id, version, state, source, pid, owner, created_at) VALUES (?,?,?,?,?,?,?)",
                (pool_id, version, "building", source, os.getpid(), self.replica_id, time.time()),
            )
        return version, first_uid

    def commit_version(
        self,
        pool_id: int,
        version: int,
        *,
        items: Iterable[ItemRow],
        size: int,
        index: str,
        stats: dict[str, Any],
        activate: bool,
        based_on: int | None | Literal["any"] = "any",
        manifest: dict[str, Any] | None = None,
        based_on_revision: int | None = None,
        fence: Fence | None = None,
    ) -> None:
        """Record a fully written version's new items, mark it ready and optionally make it current.

        ``based_on``: the version this one was derived from; if another writer (any process) made a
        different version current meanwhile, nothing is recorded and ``StaleBase`` is raised, so the
        writer can redo its change on the new current version instead of silently dropping that one.
        ``fence``: the job this write is the result of; refused (``LeaseLost``) once another replica
        took that job over, and recorded as the job's committed version otherwise.
        """
        with self.transaction() as conn:
            state = conn.execute(
                "SELECT state FROM versions WHERE pool_id = ? AND version = ?", (pool_id, version)
            ).fetchone()
            if state is None:
                raise NotFound("pool was deleted while the version was written", param="pool")
            if state[0] != "building":
                raise LeaseLost(f"version {version} was given up as {state[0]} while it was written", param="pool")
            if fence is not None:
                self._check_fence(conn, fence)
            current, revision = conn.execute("SELECT current_version, revision FROM pools WHERE id = ?",
                                             (pool_id,)).fetchone()
            if based_on != "any":
                if current != based_on:
                    raise StaleBase(f"version {based_on} is no longer current (now {current})", param="pool")
                # A compaction swaps the current version's segments (same items, revision bumped): a
                # write read before that lists segments the swap may have retired.
                if based_on_revision is not None and revision != based_on_revision:
                    raise StaleBase(f"version {based_on} changed its segments meanwhile", param="pool")
            conn.executemany(
                "INSERT INTO items (pool_id, uid, item_id, label, text, image, media_root, domain, metadata) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    (pool_id, r.uid, r.item_id, r.label, r.text, r.image, r.media_root, r.domain, r.metadata)
                    for r in items
                ),
            )
            conn.execute(
                "UPDATE versions SET state = 'ready', size = ?, index_spec = ?, stats = ?, pid = NULL, owner = NULL, "
                "manifest = ? WHERE pool_id = ? AND version = ?",
                (size, index, json.dumps(stats), json.dumps(manifest) if manifest is not None else None,
                 pool_id, version),
            )
            if activate:
                self._swap_current(conn, pool_id, version, current, revision)
            if fence is not None:
                conn.execute("UPDATE jobs SET committed_version = ? WHERE id = ?", (version, fence.job_id))

    def _swap_current(self, conn: Transaction, pool_id: int, version: int, current: int | None, revision: int) -> None:
        """Compare-and-set the pool's current pointer: from (``current``, ``revision``) as read in
        this transaction to ``version``; a pointer that moved meanwhile refuses the swap."""
        if current is None:
            swapped = conn.execute(
                "UPDATE pools SET current_version = ?, revision = revision + 1 "
                "WHERE id = ? AND current_version IS NULL AND revision = ?", (version, pool_id, revision)).rowcount
        else:
            swapped = conn.execute(
                "UPDATE pools SET current_version = ?, revision = revision + 1 "
                "WHERE id = ? AND current_version = ? AND revision = ?", (version, pool_id, current, revision)).rowcount
        if not swapped:
            raise StaleBase("the pool's current version moved during the swap", param="pool")
        self._changed(conn, pool_id)

    def replace_manifest(self, pool_id: int, version: int, *, expected: dict[str, Any] | None,
                         manifest: dict[str, Any], stats: dict[str, Any] | None = None) -> bool:
        """Swap a ready version's manifest for one with the same items (compaction); only if it is
        still ``expected``. Serving processes reload (the pool's revision is bumped)."""
        with self.transaction() as conn:
            row = conn.execute("SELECT manifest, stats, state FROM versions WHERE pool_id = ? AND version = ?",
                               (pool_id, version)).fetchone()
            if row is None or row["state"] != "ready":
                return False
            current = json.loads(row["manifest"]) if row["manifest"] else None
            if current != expected:
                return False
            conn.execute("UPDATE versions SET manifest = ?, stats = ? WHERE pool_id = ? AND version = ?",
                         (json.dumps(manifest), json.dumps(stats) if stats is not None else row["stats"],
                          pool_id, version))
            conn.execute("UPDATE pools SET revision = revision + 1 WHERE id = ?", (pool_id,))
            self._changed(conn, pool_id)
        return True

    def version_manifests(self, pool_id: int) -> list[tuple[int, str, dict[str, Any] | None]]:
        """``(version, state, manifest)`` of every version of a pool, for retention."""
        rows = self.query("SELECT version, state, manifest FROM versions WHERE pool_id = ? ORDER BY version", (pool_id,))
        return [(r["version"], r["state"], json.loads(r["manifest"]) if r["manifest"] else None) for r in rows]

    def compaction_active(self, pool_id: int) -> bool:
        """Whether a compaction job of the pool is queued or running under a live lease. A job left
        'running' by a process that died does not count: its staging folder is a leftover, whether
        or not it has been taken over or marked failed yet."""
        rows = self.query(
            "SELECT jobs.pid, jobs.owner, jobs.lease_until FROM jobs JOIN pools ON jobs.pool = pools.name "
            "WHERE pools.id = ? AND jobs.kind = 'compact' AND jobs.state IN ('queued', 'running')", (pool_id,))
        if not rows:
            return False
        now = self.now()
        return any(self.held(row, now) for row in rows)

    def held(self, row: Any, now: float) -> bool:  # noqa: ANN401 - a row with pid, owner, lease_until
        """Whether the job, version or adapter in ``row`` is still held by a live process."""
        if row["owner"] == self.replica_id:
            return True
        lease = row["lease_until"]
        if not self.shared and row["pid"] is not None and not pid_alive(row["pid"]):
            return False  # one host: a process that is gone holds nothing, whatever its lease says
        if lease is None:
            # Rows from before leases (or queued by a process that stopped cleanly): a live process
            # of this host still counts; on a shared catalog only leases do.
            return not self.shared and (row["pid"] is None or pid_alive(row["pid"]))
        return float(lease) > now

    def fail_version(self, pool_id: int, version: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE versions SET state = 'failed', pid = NULL, owner = NULL "
                "WHERE pool_id = ? AND version = ? AND state = 'building'",
                (pool_id, version),
            )

    def activate(self, pool_id: int, version: int) -> None:
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT state FROM versions WHERE pool_id = ? AND version = ?", (pool_id, version)
            ).fetchone()
            if row is None:
                raise NotFound(f"version {version} does not exist", param="version")
            if row[0] != "ready":
                raise Conflict(f"version {version} is {row[0]}, only a ready version can be activated", param="version")
            current, revision = conn.execute("SELECT current_version, revision FROM pools WHERE id = ?",
                                             (pool_id,)).fetchone()
            self._swap_current(conn, pool_id, version, current, revision)

    def prune_versions(self, pool_id: int, *, keep: int) -> list[int]:
        """Mark all but the newest ``keep`` ready versions (and never the current one) ``pruned``;
        returns them, for their files to be removed."""
        with self.transaction() as conn:
            current = conn.execute("SELECT current_version FROM pools WHERE id = ?", (pool_id,)).fetchone()
            if current is None:
                return []
            ready = [r[0] for r in conn.execute(
                "SELECT version FROM versions WHERE pool_id = ? AND state = 'ready' ORDER BY version DESC",
                (pool_id,)).fetchall() if r[0] != current[0]]
            pruned = ready[keep:]
            conn.executemany("UPDATE versions SET state = 'pruned' WHERE pool_id = ? AND version = ?",
                             [(pool_id, v) for v in pruned])
        return pruned

    def abandon_dead_builds(self) -> list[tuple[int, int]]:
        """Mark ``building`` versions and adapters whose process holds no lease any more failed
        (it died, on this host or another); returns the versions as ``(pool_id, version)``."""
        now = self.now()
        leases = {r["id"]: r["lease_until"] for r in self.query("SELECT id, lease_until FROM replicas")}

        def dead(row: Any) -> bool:  # noqa: ANN401
            lease = leases.get(row["owner"]) if row["owner"] is not None else None
            return not self.held({"owner": row["owner"], "pid": row["pid"], "lease_until": lease}, now)

        found = [(r["pool_id"], r["version"])
                 for r in self.query("SELECT pool_id, version, pid, owner FROM versions WHERE state = 'building'")
                 if dead(r)]
        for pool_id, version in found:
            self.fail_version(pool_id, version)
        adapters = [r["id"] for r in self.query("SELECT id, pid, owner FROM adapters WHERE state = 'building'")
                    if dead(r)]
        if adapters:
            with self.transaction() as conn:
                conn.executemany("UPDATE adapters SET state = 'failed', pid = NULL, owner = NULL "
                                 "WHERE id = ? AND state = 'building'", [(a,) for a in adapters])
        return found

    # replicas ------------------------------------------------------------------------------------

    def heartbeat(self, serving: dict[int, list[str]] | None = None) -> None:
        """Renew this replica's lease by ``lease_s`` from the database's now; record what it serves
        (retention keeps those files). Its jobs' leases are renewed by ``JobService``."""
        with self.transaction(serialised=False) as tx:
            now = self.db.now
            renewed = tx.execute(
                f"UPDATE replicas SET heartbeat_at = {now}, lease_until = {now} + ?"
                + (", serving = ?" if serving is not None else "") + " WHERE id = ?",
                (self.lease_s, *((json.dumps({str(k): v for k, v in serving.items()}),) if serving is not None else ()),
                 self.replica_id)).rowcount
            if not renewed:  # pruned as dead after a long stall: register again
                tx.execute(
                    f"INSERT INTO replicas (id, host, pid, started_at, heartbeat_at, lease_until, serving) "
                    f"VALUES (?, ?, ?, {now}, {now}, {now} + ?, ?)",
                    (self.replica_id, socket.gethostname(), os.getpid(), self.lease_s,
                     json.dumps({str(k): v for k, v in (serving or {}).items()})))

    def replicas(self) -> list[ReplicaRecord]:
        return [ReplicaRecord(id=r["id"], host=r["host"], pid=r["pid"], started_at=r["started_at"],
                              heartbeat_at=r["heartbeat_at"], lease_until=r["lease_until"],
                              serving=json.loads(r["serving"] or "{}"))
                for r in self.query("SELECT * FROM replicas ORDER BY started_at")]

    def served_segments(self, pool_id: int) -> set[str]:
        """The segments of ``pool_id`` that a live replica (this one included) reports serving."""
        now = self.now()
        out: set[str] = set()
        for replica in self.replicas():
            if replica.id == self.replica_id or replica.lease_until > now:
                out.update(replica.serving.get(str(pool_id), ()))
        return out

    def forget_dead_replicas(self, older_than_s: float = 3600.0) -> int:
        """Drop the rows of replicas whose lease ran out more than ``older_than_s`` ago."""
        with self.transaction(serialised=False) as tx:
            return int(tx.execute(f"DELETE FROM replicas WHERE lease_until < {self.db.now} - ?",
                                  (older_than_s,)).rowcount)

    # retired files -------------------------------------------------------------------------------

    def retire(self, pool_id: int, names: Iterable[str]) -> dict[str, float]:
        """Record ``names`` as unused from now (those already recorded keep their time), forget the
        pool's other retired names; returns each name's retirement time and the database's now under
        the key ``""``."""
        wanted = set(names)
        with self.transaction() as tx:
            known = {r[0]: float(r[1]) for r in tx.execute(
                "SELECT name, since FROM retired WHERE pool_id = ?", (pool_id,)).fetchall()}
            now = float(tx.execute(f"SELECT {self.db.now}").fetchone()[0])
            tx.executemany("DELETE FROM retired WHERE pool_id = ? AND name = ?",
                           [(pool_id, n) for n in known if n not in wanted])
            fresh = [n for n in wanted if n not in known]
            tx.executemany("INSERT INTO retired (pool_id, name, since) VALUES (?, ?, ?)",
                           [(pool_id, n, now) for n in fresh])
        return {**{n: known.get(n, now) for n in wanted}, "": now}

    def forget_retired(self, pool_id: int, names: Iterable[str]) -> None:
        with self.transaction() as tx:
            tx.executemany("DELETE FROM retired WHERE pool_id = ? AND name = ?", [(pool_id, n) for n in names])

    # jobs ----------------------------------------------------------------------------------------

    def _check_fence(self, conn: Transaction, fence: Fence) -> None:
        row = conn.execute("SELECT owner, attempt, state FROM jobs WHERE id = ?", (fence.job_id,)).fetchone()
        if row is None or row["owner"] != fence.owner or row["attempt"] != fence.attempt or \
                row["state"] not in ("queued", "running"):
            raise LeaseLost(f"job {fence.job_id} was taken over by another replica; this commit is refused",
                            param="job")

    # adapters ------------------------------------------------------------------------------------

    def reserve_adapter(self, pool_id: int, version: int) -> int:
        with self.transaction() as conn:
            row = conn.execute(
                "INSERT INTO adapters (pool_id, version, state, pid, owner, created_at) VALUES (?,?,?,?,?,?) "
                "RETURNING id",
                (pool_id, version, "building", os.getpid(), self.replica_id, time.time()),
            ).fetchone()
            return int(row[0])

    def commit_adapter(self, pool_id: int, adapter_id: int, info: dict[str, Any]) -> None:
        """Mark an adapter ready; it becomes its version's adapter and serving reloads the pool."""
        with self.transaction() as conn:
            updated = conn.execute(
                "UPDATE adapters SET state = 'ready', info = ?, pid = NULL, owner = NULL "
                "WHERE id = ? AND state = 'building'",
                (json.dumps(info), adapter_id),
            ).rowcount
            if not updated:
                raise NotFound("pool was deleted while the adapter was trained", param="pool")
            conn.execute("UPDATE pools SET revision = revision + 1 WHERE id = ?", (pool_id,))
            self._changed(conn, pool_id)

    def fail_adapter(self, adapter_id: int) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE adapters SET state = 'failed', pid = NULL, owner = NULL "
                         "WHERE id = ? AND state = 'building'", (adapter_id,))

    def adapter(self, pool_id: int, version: int) -> AdapterRecord | None:
        """The ready adapter of a version (the newest, when it was trained more than once)."""
        rows = self.query(
            "SELECT * FROM adapters WHERE pool_id = ? AND version = ? AND state = 'ready' ORDER BY id DESC LIMIT 1",
            (pool_id, version),
        )
        return _adapter(rows[0]) if rows else None

    def adapter_by_id(self, pool_id: int, adapter_id: int) -> AdapterRecord | None:
        rows = self.query("SELECT * FROM adapters WHERE pool_id = ? AND id = ? AND state = 'ready'", (pool_id, adapter_id))
        return _adapter(rows[0]) if rows else None

    def adapter_ids(self, pool_id: int, version: int) -> list[int]:
        rows = self.query("SELECT id FROM adapters WHERE pool_id = ? AND version = ? ORDER BY id", (pool_id, version))
        return [r[0] for r in rows]

    def adapted_versions(self, pool_id: int) -> list[int]:
        rows = self.query(
            "SELECT DISTINCT version FROM adapters WHERE pool_id = ? AND state = 'ready' ORDER BY version", (pool_id,)
        )
        return [r[0] for r in rows]

    # items ---------------------------------------------------------------------------------------

    def item_rows(self, pool_id: int, uids: Sequence[int]) -> list[ItemRow]:
        """The rows with these uids, in the order of ``uids`` (which must be sorted ascending)."""
        if not len(uids):
            return []
        lo, hi = int(uids[0]), int(uids[-1])
        rows = self.query(
            "SELECT uid, item_id, label, text, image, media_root, domain, metadata FROM items "
            "WHERE pool_id = ? AND uid BETWEEN ? AND ? ORDER BY uid",
            (pool_id, lo, hi),
        )
        wanted = set(int(u) for u in uids)
        out = [ItemRow(*tuple(r)) for r in rows if r["uid"] in wanted]
        if len(out) != len(uids):
            raise RuntimeError(f"catalog holds {len(out)} of the {len(uids)} items of a version")
        return out


class StaleBase(Conflict):
    """A write derived from a version that another writer has replaced as current meanwhile."""


class LeaseLost(Conflict):
    """A commit by a process whose claim (on a job or a building version) ran out and was taken
    over or given up meanwhile: refused, so nothing is committed twice."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
