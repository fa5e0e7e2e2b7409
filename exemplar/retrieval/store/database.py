"""The catalog's database: SQLite (embedded default) or PostgreSQL (replicas on several hosts).

The catalog writes its SQL once, with ``?`` placeholders, in the subset both engines speak; a
``Database`` runs it. What differs lives here and nowhere else: how a write transaction is
serialised (SQLite's ``BEGIN IMMEDIATE``; on PostgreSQL a transaction-scoped advisory lock, so
replicas on other hosts queue in the database, not behind a lock of one process), the clock that
times leases (the database's, never a host's), row locking for job claims (``FOR UPDATE SKIP
LOCKED``), change notification (``NOTIFY`` as a hint to other replicas) and reconnection.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from exemplar.errors import InvalidRequest

__all__ = [
    "CHANGES_CHANNEL",
    "CommitOutcomeUnknown",
    "Database",
    "PostgresDatabase",
    "Row",
    "SQLiteDatabase",
    "Transaction",
    "open_database",
    "redact_url",
]

log = logging.getLogger(__name__)

CHANGES_CHANNEL = "exemplar_changes"
"""The PostgreSQL channel on which a commit that changes what a pool serves notifies replicas."""

# Every serialised catalog write takes this advisory lock first (``pg_advisory_xact_lock``): one
# writer at a time across all replicas, as SQLite's BEGIN IMMEDIATE gives within one host.
_WRITE_LOCK_KEY = 0x4558454D  # "EXEM"
_MIGRATION_LOCK_KEY = 0x4558454E


class CommitOutcomeUnknown(RuntimeError):
    """The connection failed while a COMMIT was in flight: the change may or may not have landed.
    Files written for it must be kept (retention decides later, from what the catalog then says)."""


class Row(tuple):  # type: ignore[type-arg]
    """A result row read by position or by column name (what ``sqlite3.Row`` offers), for PostgreSQL."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> "Row":
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:  # noqa: ANN401 - a column's value
        if isinstance(key, str):
            return super().__getitem__(self._names[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._names)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...  # noqa: ANN401
    def fetchall(self) -> list[Any]: ...


class Transaction(Protocol):
    """What a catalog transaction offers: statements with ``?`` placeholders."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor: ...
    def executemany(self, sql: str, rows: Any) -> None: ...  # noqa: ANN401 - an iterable of argument tuples


class Database(Protocol):
    dialect: str
    url: str
    now: str
    """An SQL expression for the database's clock in epoch seconds (leases are timed by it)."""
    skip_locked: str
    """Appended to a job-claiming SELECT: rows another replica is claiming are passed over."""
    shared: bool
    """Whether processes on other hosts may share this catalog (then a process id says nothing
    about whether its owner lives, and files may be mapped by readers this host cannot see)."""

    def transaction(self, *, serialised: bool = True) -> Any: ...  # noqa: ANN401 - a context manager of Transaction
    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...
    def executescript(self, sql: str) -> None: ...
    def notify(self, tx: Transaction, payload: str) -> None: ...
    def listen(self, stop: threading.Event, wake: threading.Event) -> None: ...
    def close(self) -> None: ...


class SQLiteDatabase:
    """One WAL connection behind a lock; writers in other processes on this host wait their turn."""

    dialect = "sqlite"
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    skip_locked = ""  # BEGIN IMMEDIATE already admits one writer at a time
    shared = False

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.url = f"sqlite:///{path}"
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def transaction(self, *, serialised: bool = True) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: writers in other processes wait instead of interleaving."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def executescript(self, sql: str) -> None:
        with self._lock:
            self._conn.executescript(sql)

    def notify(self, tx: Transaction, payload: str) -> None:
        """Nothing to send: processes on one host find changes by polling the revisions."""

    def listen(self, stop: threading.Event, wake: threading.Event) -> None:
        """No notifications on SQLite: return at once (the refresher polls)."""

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _PgTransaction:
    def __init__(self, conn: Any) -> None:  # noqa: ANN401 - psycopg.Connection
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        return self._conn.execute(_pg(sql), tuple(args))

    def executemany(self, sql: str, rows: Any) -> None:  # noqa: ANN401
        with self._conn.cursor() as cursor:
            cursor.executemany(_pg(sql), list(rows))


def _pg(sql: str) -> str:
    # The catalog's SQL has no '?' or '%' inside literals, so placeholders translate one to one.
    return sql.replace("?", "%s")


def _row_factory(cursor: Any) -> Any:  # noqa: ANN401 - psycopg's RowFactory protocol
    description = cursor.description
    if description is None:
        return lambda values: values
    names = {column.name: i for i, column in enumerate(description)}
    return lambda values: Row(values, names)


class PostgresDatabase:
    """One connection behind a lock (the catalog is off the request path: snapshots are cached),
    reopened after a failure; serialised writes queue on an advisory lock in the database."""

    dialect = "postgresql"
    now = "extract(epoch from clock_timestamp())::double precision"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    shared = True

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0) -> None:
        try:
            import psycopg
        except ImportError:  # pragma: no cover - the dependency is declared; a broken install
            raise InvalidRequest("a postgresql:// catalog needs psycopg: pip install 'psycopg[binary]'",
                                 param="catalog_url") from None
        self._psycopg = psycopg
        self.url = url
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.RLock()
        self._conn = self._connect()

    def _connect(self) -> Any:  # noqa: ANN401 - psycopg.Connection
        return self._psycopg.connect(self.url, autocommit=True, row_factory=_row_factory,
                                     connect_timeout=max(1, int(self._connect_timeout_s)))

    def _connection(self) -> Any:  # noqa: ANN401
        if self._conn.closed or self._conn.broken:
            log.warning("catalog connection to %s lost; reconnecting", redact_url(self.url))
            self._conn = self._connect()
        return self._conn

    @contextmanager
    def transaction(self, *, serialised: bool = True) -> Iterator[_PgTransaction]:
        """A transaction; ``serialised`` ones (every catalog write but job leases) first take the
        catalog's advisory lock, so a read-then-write inside sees every write committed before it."""
        psycopg = self._psycopg
        with self._lock:
            conn = self._connection()
            committing = False
            try:
                conn.execute("BEGIN")
                tx = _PgTransaction(conn)
                if serialised:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK_KEY,))
                yield tx
                committing = True
                conn.execute("COMMIT")
            except BaseException as exc:
                if committing and isinstance(exc, psycopg.OperationalError):
                    raise CommitOutcomeUnknown("the catalog connection failed during COMMIT") from exc
                if not conn.closed and not conn.broken:
                    try:
                        conn.execute("ROLLBACK")
                    except psycopg.Error:
                        log.exception("rolling back a catalog transaction failed")
                raise

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._connection().execute(_pg(sql), tuple(args)).fetchall()

    def executescript(self, sql: str) -> None:
        with self._lock:
            self._connection().execute(sql)

    @contextmanager
    def migration_lock(self) -> Iterator[_PgTransaction]:
        """A transaction holding the migration lock: replicas starting at once apply each
        migration exactly once (the others wait, then find it recorded)."""
        with self.transaction(serialised=False) as tx:
            tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK_KEY,))
            yield tx

    def notify(self, tx: Transaction, payload: str) -> None:
        """Tell listening replicas, when this transaction commits, that ``payload`` (a pool) changed."""
        tx.execute("SELECT pg_notify(?, ?)", (CHANGES_CHANNEL, payload))

    def listen(self, stop: threading.Event, wake: threading.Event) -> None:
        """Until ``stop``: set ``wake`` whenever another process commits a change (its own
        connection; on any failure it waits and listens again, and polling covers the gap)."""
        psycopg = self._psycopg
        while not stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True,
                                     connect_timeout=max(1, int(self._connect_timeout_s))) as conn:
                    conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            wake.set()
            except psycopg.Error:
                log.warning("listening for catalog changes failed; polling until it reconnects", exc_info=True)
                stop.wait(1.0)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_database(url: str | None, data_dir: Path) -> SQLiteDatabase | PostgresDatabase:
    """The catalog database named by ``url``: ``postgresql://...`` (or ``postgres://``), or
    ``sqlite:///path``; None or empty: ``catalog.sqlite3`` in ``data_dir``."""
    if not url:
        return SQLiteDatabase(data_dir / "catalog.sqlite3")
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url)
    if url.startswith("sqlite:///"):
        return SQLiteDatabase(Path(url.removeprefix("sqlite:///")))
    raise InvalidRequest(
        f"catalog URL {redact_url(url)!r} is not supported: use postgresql://user@host:port/db or sqlite:///path",
        param="catalog_url")


def redact_url(url: str) -> str:
    """``url`` without its password (for logs and errors)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url

