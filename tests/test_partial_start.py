"""A server whose start fails midway leaves nothing running: no task, no store thread, no open file, no port.

`create_server` opens the store, starts the event log's writer and listens to the other replicas before it
serves; a failure after the first of those used to leave what had started behind (its stop was registered only
once the whole start had worked). Each store gets a real fault of its own: a SQLite file whose schema is newer
than this code (the store's connection and thread are open when it is found), and a PostgreSQL role allowed one
connection (the writer connects and the writer task starts; the listener's connection is then refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import threading
import urllib.parse
import uuid
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from facilitair.server.settings import Settings
from facilitair.server.store.base import SchemaError, StoreUnavailable
from facilitair.server.transport.app import create_server
from tests.harness.processes import free_port
from tests.harness.servers import clear_server_environment


def running_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


def open_files() -> set[str]:
    """What this process has open, by path (sockets and pipes included, by their names)."""
    found: set[str] = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own descriptor, closed meanwhile
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(autouse=True)
def no_server_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_server_environment(monkeypatch)


def newer_sqlite_file(path: Path) -> None:
    """A database file written by a newer facilitair: its schema version is past this code's."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY)")
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    conn.close()


async def test_a_start_failing_after_the_sqlite_store_opened_leaves_nothing_running(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    newer_sqlite_file(db)
    port = free_port()
    threads = set(threading.enumerate())
    tasks = running_tasks()
    with pytest.raises(SchemaError, match="version 99, newer than this server knows"):
        await create_server(Settings(listen=f"127.0.0.1:{port}", db=db, http_listen="off", sandbox="off"))
    left = [t.name for t in set(threading.enumerate()) - threads if t.is_alive()]
    assert [name for name in left if name.startswith("sqlite-")] == []  # the store's connection threads
    assert running_tasks() - tasks == set()
    assert [f for f in open_files() if f.startswith(str(db))] == []  # the file, its WAL and its lock are closed
    assert port_is_free(port)
    # And so the next server on that file gets as far as the same refusal, not "the file is in use".
    with pytest.raises(SchemaError):
        await create_server(Settings(listen="127.0.0.1:0", db=db, http_listen="off", sandbox="off"))


async def test_a_start_failing_after_the_postgres_store_opened_leaves_nothing_running(
    tmp_path: Path, pg_url: str
) -> None:
    role = f"facilitair_one_{uuid.uuid4().hex[:12]}"
    database = urllib.parse.urlsplit(pg_url).path.lstrip("/")
    admin = await asyncpg.connect(pg_url, timeout=10)
    try:
        # Not a superuser: PostgreSQL does not hold superusers to a connection limit.
        await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
        await admin.execute(f'ALTER DATABASE "{database}" OWNER TO "{role}"')
        await admin.execute(f'ALTER SCHEMA public OWNER TO "{role}"')
        parts = urllib.parse.urlsplit(pg_url)
        limited = urllib.parse.urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        port = free_port()
        tasks = running_tasks()
        settings = Settings(
            listen=f"127.0.0.1:{port}",
            database_url=SecretStr(limited),
            db=tmp_path / "unused.db",
            http_listen="off",
            sandbox="off",
        )
        with pytest.raises(StoreUnavailable, match="too many connections"):
            await create_server(settings)
        # The store had opened (its writer connection) and the event log's writer had started: both are gone.
        assert sorted(t.get_name() for t in running_tasks() - tasks) == []
        assert port_is_free(port)
        assert not (tmp_path / "unused.db").exists()
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" OWNER TO CURRENT_USER')
        await admin.execute(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER')
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.close()
        cleanup = await asyncpg.connect(pg_url, timeout=10)
        try:
            await cleanup.execute(f'DROP ROLE "{role}"')
        finally:
            await cleanup.close()
