"""A throwaway PostgreSQL server for tests: Debian's ``postgresql`` package, ``initdb`` in a
temporary folder (as the ``postgres`` user when run as root: initdb refuses root), on a free
loopback port. ``EXEMPLAR_TEST_POSTGRES_URL`` names an existing server instead."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["available", "schema_url", "throwaway_postgres"]


def _bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def available() -> bool:
    return bool(os.environ.get("EXEMPLAR_TEST_POSTGRES_URL")) or _bin() is not None


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A server's URL for the block; the server and its files are removed after it."""
    given = os.environ.get("EXEMPLAR_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    from tests.processes import free_port

    bindir = _bin()
    assert bindir is not None, "PostgreSQL is not installed (apt-get install postgresql)"
    root = Path(tempfile.mkdtemp(prefix="exemplar-pg-"))
    data = root / "data"
    port = free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres")
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)
    with open(root / "server.log", "wb") as log:
        server = subprocess.Popen(
            [*as_postgres, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
             "-k", str(root), "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=log)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(url, connect_timeout=1).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError(f"PostgreSQL did not start: {(root / 'server.log').read_text()}") from None
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(root, ignore_errors=True)


def schema_url(server_url: str) -> str:
    """A URL on a new, empty schema of the server: each test gets a catalog of its own."""
    import psycopg

    schema = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in server_url else "?"
    return f"{server_url}{sep}options=-csearch_path%3D{schema}"
