"""The SQLite catalog: pools, items, versions. WAL mode, one connection behind a lock.

Versions are immutable in content. A version is a manifest (JSON in ``versions.manifest``): the
segments it is made of and, per segment, the file of its deleted rows. Versions written before
segments existed have no manifest: their folder ``versions/<v>`` is their one segment, and their
item rows live in the ``items`` table (one row per content of an item, listed by ``uids.npy``).
A version row is reserved as ``building`` before its files are written and becomes ``ready`` in the
same transaction that records its items and, optionally, switches the pool's ``current`` pointer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from exemplar.errors import Conflict, NotFound

__all__ = ["AdapterRecord", "Catalog", "ItemRow", "PoolRecord", "StaleBase", "VersionRecord", "pid_alive"]

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pools (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    encoder TEXT NOT NULL,
    embed TEXT NOT NULL,
    metric TEXT NOT NULL,
    index_spec TEXT NOT NULL,
    dim INTEGER NOT NULL,
    current_version INTEGER,
    revision INTEGER NOT NULL DEFAULT 0,
    next_uid INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    centre INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS versions (
    pool_id INTEGER NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    index_spec TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    stats TEXT NOT NULL DEFAULT '{}',
    pid INTEGER,
    created_at REAL NOT NULL,
    manifest TEXT,
    PRIMARY KEY (pool_id, version)
);
CREATE TABLE IF NOT EXISTS adapters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pool_id INTEGER NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    info TEXT NOT NULL DEFAULT '{}',
    pid INTEGER,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    pool TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    progress TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    errors TEXT NOT NULL DEFAULT '[]',
    pid INTEGER,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS items (
    pool_id INTEGER NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    label TEXT,
    text TEXT,
    image TEXT,
    media_root TEXT,
    domain TEXT,
    metadata TEXT,
    PRIMARY KEY (pool_id, uid)
);
"""


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


def _pool(row: sqlite3.Row) -> PoolRecord:
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


def _adapter(row: sqlite3.Row) -> AdapterRecord:
    return AdapterRecord(
        id=row["id"], version=row["version"], state=row["state"], info=json.loads(row["info"] or "{}"),
        created_at=row["created_at"],
    )


def _version(row: sqlite3.Row) -> VersionRecord:
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


class Catalog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a catalog written by an older release up to this schema (idempotent, one transaction)."""
        with self.transaction() as conn:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(versions)")}
            if "manifest" not in columns:  # schema 1: versions were full copies, read as one segment each
                conn.execute("ALTER TABLE versions ADD COLUMN manifest TEXT")
            if "centre" not in {r[1] for r in conn.execute("PRAGMA table_info(pools)")}:  # schema 2
                conn.execute("ALTER TABLE pools ADD COLUMN centre INTEGER NOT NULL DEFAULT 0")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: writers in other processes wait instead of interleaving."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()


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
                "INSERT INTO versions (pool_id, version, state, source, pid, created_at) VALUES (?,?,?,?,?,?)",
                (pool_id, version, "building", source, os.getpid(), time.time()),
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
    ) -> None:
        """Record a fully written version's new items, mark it ready and optionally make it current.

        ``based_on``: the version this one was derived from; if another writer (any process) made a
        different version current meanwhile, nothing is recorded and ``StaleBase`` is raised, so the
        writer can redo its change on the new current version instead of silently dropping that one.
        """
        with self.transaction() as conn:
            state = conn.execute(
                "SELECT state FROM versions WHERE pool_id = ? AND version = ?", (pool_id, version)
            ).fetchone()
            if state is None:
                raise NotFound("pool was deleted while the version was written", param="pool")
            if based_on != "any":
                current, revision = conn.execute("SELECT current_version, revision FROM pools WHERE id = ?",
                                                 (pool_id,)).fetchone()
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
                "UPDATE versions SET state = 'ready', size = ?, index_spec = ?, stats = ?, pid = NULL, manifest = ? "
                "WHERE pool_id = ? AND version = ?",
                (size, index, json.dumps(stats), json.dumps(manifest) if manifest is not None else None,
                 pool_id, version),
            )
            if activate:
                conn.execute(
                    "UPDATE pools SET current_version = ?, revision = revision + 1 WHERE id = ?", (version, pool_id)
                )

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
        return True

    def version_manifests(self, pool_id: int) -> list[tuple[int, str, dict[str, Any] | None]]:
        """``(version, state, manifest)`` of every version of a pool, for retention."""
        rows = self.query("SELECT version, state, manifest FROM versions WHERE pool_id = ? ORDER BY version", (pool_id,))
        return [(r["version"], r["state"], json.loads(r["manifest"]) if r["manifest"] else None) for r in rows]

    def compaction_active(self, pool_id: int) -> bool:
        """Whether a compaction job of the pool is queued or running in a live process. A job left
        'running' by a process that was killed does not count: its staging folder is a leftover,
        whether or not the job service has marked the job failed yet (start-up cleans up first)."""
        rows = self.query(
            "SELECT jobs.pid FROM jobs JOIN pools ON jobs.pool = pools.name WHERE pools.id = ? "
            "AND jobs.kind = 'compact' AND jobs.state IN ('queued', 'running')", (pool_id,))
        return any(row["pid"] is None or row["pid"] == os.getpid() or pid_alive(row["pid"]) for row in rows)

    def fail_version(self, pool_id: int, version: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE versions SET state = 'failed', pid = NULL WHERE pool_id = ? AND version = ? AND state = 'building'",
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
            conn.execute("UPDATE pools SET current_version = ?, revision = revision + 1 WHERE id = ?", (version, pool_id))

    def prune_versions(self, pool_id: int, *, keep: int) -> list[int]:
        """Mark all but the newest ``keep`` ready versions (and never the current one) ``pruned``;
        returns them, for their files to be removed."""
        with self.transaction() as conn:
            current = conn.execute("SELECT current_version FROM pools WHERE id = ?", (pool_id,)).fetchone()
            if current is None:
                return []
            ready = [r[0] for r in conn.execute(
                "SELECT version FROM versions WHERE pool_id = ? AND state = 'ready' AND version IS NOT ? "
                "ORDER BY version DESC", (pool_id, current[0]))]
            pruned = ready[keep:]
            conn.executemany("UPDATE versions SET state = 'pruned' WHERE pool_id = ? AND version = ?",
                             [(pool_id, v) for v in pruned])
        return pruned

    def abandon_dead_builds(self) -> list[tuple[int, int]]:
        """Mark ``building`` versions whose process is gone as failed; returns ``(pool_id, version)``."""
        dead = []
        for row in self.query("SELECT pool_id, version, pid FROM versions WHERE state = 'building'"):
            if row["pid"] is None or not pid_alive(row["pid"]):
                dead.append((row["pool_id"], row["version"]))
        for pool_id, version in dead:
            self.fail_version(pool_id, version)
        with self.transaction() as conn:
            for row in conn.execute("SELECT id, pid FROM adapters WHERE state = 'building'").fetchall():
                if row["pid"] is None or not pid_alive(row["pid"]):
                    conn.execute("UPDATE adapters SET state = 'failed', pid = NULL WHERE id = ?", (row["id"],))
        return dead

    # adapters ------------------------------------------------------------------------------------

    def reserve_adapter(self, pool_id: int, version: int) -> int:
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO adapters (pool_id, version, state, pid, created_at) VALUES (?,?,?,?,?)",
                (pool_id, version, "building", os.getpid(), time.time()),
            )
            return int(cursor.lastrowid)  # type: ignore[arg-type]

    def commit_adapter(self, pool_id: int, adapter_id: int, info: dict[str, Any]) -> None:
        """Mark an adapter ready; it becomes its version's adapter and serving reloads the pool."""
        with self.transaction() as conn:
            updated = conn.execute(
                "UPDATE adapters SET state = 'ready', info = ?, pid = NULL WHERE id = ? AND state = 'building'",
                (json.dumps(info), adapter_id),
            ).rowcount
            if not updated:
                raise NotFound("pool was deleted while the adapter was trained", param="pool")
            conn.execute("UPDATE pools SET revision = revision + 1 WHERE id = ?", (pool_id,))

    def fail_adapter(self, adapter_id: int) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE adapters SET state = 'failed', pid = NULL WHERE id = ? AND state = 'building'", (adapter_id,))

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
