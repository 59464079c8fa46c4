"""The store a test runs on (a SQLite file or a PostgreSQL database), and helpers to reach it behind the server.

`Target` says where a test's runs live; the `store_target` fixture (tests/conftest.py) picks it from
`store_kind`: "sqlite" by default, both kinds for a module or test marked `both_stores`. A server gets it as
settings (`Target.settings`) or as its environment (`Target.environment`); `Stores` opens store objects on it
(several = several replicas); `execute`/`fetch` reach the same tables from outside the server, as an operator
or a broken disk would, with one SQL text for both engines. A slow disk is a `CommitGate` in the server's own
store (`Stores.gated`), or, for a server in another process, `writes_held` from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import stat
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr

from facilitair.server.store.base import Batch, EventStore, InsertOutcome, RunRow, StoredEvent
from facilitair.server.store.postgres import PostgresStore
from facilitair.server.store.sqlite import SqliteStore

STORE_KINDS = ("sqlite", "postgresql")
QUEUED, RUNNING, COMPLETED, INTERRUPTED = 1, 2, 3, 6
HANG_GUARD = 15.0
DB_NAME = "facilitair.db"  # the SQLite file of a test, in its tmp_path


@dataclass(frozen=True)
class Target:
    """Where the runs of a test live: always a SQLite path, and a PostgreSQL URL when the kind is postgresql."""

    kind: str
    db: Path  # the SQLite file (a server on PostgreSQL is given it too, so it never falls back to its default)
    url: str | None = None  # the PostgreSQL database

    @property
    def where(self) -> str:
        """The SQLite file's path or the database's URL."""
        return self.url if self.url is not None else str(self.db)

    def settings(self) -> dict[str, Any]:
        """The Settings fields that put a server on this store."""
        if self.url is None:
            return {"db": self.db}
        return {"db": self.db, "database_url": SecretStr(self.url)}

    def environment(self) -> dict[str, str]:
        """The same as environment variables, for a server process."""
        if self.url is None:
            return {"FACILITAIR_DB": str(self.db)}
        return {"FACILITAIR_DB": str(self.db), "FACILITAIR_DATABASE_URL": self.url}


def _numbered(statement: str) -> str:
    """SQLite's `?` placeholders as PostgreSQL's `$1, $2, ...`."""
    count = iter(range(1, statement.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(count)}", statement)


async def execute(target: Target, *statements: str | tuple[str, tuple[Any, ...]]) -> None:
    """Run statements (SQL with `?` placeholders, alone or with their parameters) in one transaction."""
    steps = [(s, ()) if isinstance(s, str) else s for s in statements]
    if target.url is None:
        with contextlib.closing(sqlite3.connect(target.db)) as lite, lite:
            for sql, params in steps:
                lite.execute(sql, params)
        return
    conn = await asyncpg.connect(target.url, timeout=HANG_GUARD)
    try:
        async with conn.transaction():
            for sql, params in steps:
                await conn.execute(_numbered(sql), *params)
    finally:
        await conn.close()


async def fetch(target: Target, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of a query (SQL with `?` placeholders)."""
    if target.url is None:
        with contextlib.closing(sqlite3.connect(f"file:{target.db}?mode=ro", uri=True)) as lite:
            return list(lite.execute(sql, params).fetchall())
    conn = await asyncpg.connect(target.url, timeout=HANG_GUARD)
    try:
        return [tuple(row) for row in await conn.fetch(_numbered(sql), *params)]
    finally:
        await conn.close()


async def owners(target: Target) -> dict[str, str]:
    """run_id -> principal, read straight from the store."""
    return dict(await fetch(target, "SELECT run_id, principal FROM runs"))


class Stores:
    """Opens stores on the test's database (several = several replicas) and closes them all at the end."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.opened: list[EventStore] = []

    @property
    def kind(self) -> str:
        """ "sqlite" or "postgresql"."""
        return self.target.kind

    def make(self) -> EventStore:
        """A store on the database, not opened."""
        if self.target.url is None:
            return SqliteStore(self.target.db)
        return PostgresStore(self.target.url)

    def gated(self, gate: CommitGate) -> EventStore:
        """A store on the database, not opened, whose batches pass `gate` before they are written."""
        if self.target.url is None:
            return GatedSqliteStore(self.target.db, gate)
        return GatedPostgresStore(self.target.url, gate)

    async def new(self) -> EventStore:
        """An opened store on the database (its own connections: another replica)."""
        store = self.make()
        await store.open()
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        """Close every store opened."""
        for store in reversed(self.opened):
            await store.close()
        self.opened.clear()


class CommitGate:
    """Holds the commit of a stage's checkpoint (and every write queued behind it) until the test opens it.

    The event log's writer stops at the gate with the batch that carries a checkpoint of `stage`, before the
    store writes any of it: to the server this is a commit that takes as long as the test wants.
    """

    def __init__(self, stage: int) -> None:
        self.stage = stage
        self.reached = asyncio.Event()  # the batch with the checkpoint waits at the gate
        self.opened = asyncio.Event()

    async def passing(self, batch: Batch) -> None:
        """Return when `batch` may be written."""
        if not self.opened.is_set() and any(c.stage == self.stage for c in batch.checkpoints):
            self.reached.set()
            await self.opened.wait()


class GatedSqliteStore(SqliteStore):
    """A SQLite store whose batches pass a `CommitGate` before they are written."""

    def __init__(self, path: Path, gate: CommitGate) -> None:
        super().__init__(path)
        self.gate = gate

    async def write_batch(self, batch: Batch) -> set[str]:
        """Wait at the gate, then write."""
        await self.gate.passing(batch)
        return await super().write_batch(batch)


class GatedPostgresStore(PostgresStore):
    """A PostgreSQL store whose batches pass a `CommitGate` before they are written."""

    def __init__(self, url: str, gate: CommitGate) -> None:
        super().__init__(url)
        self.gate = gate

    async def write_batch(self, batch: Batch) -> set[str]:
        """Wait at the gate, then write."""
        await self.gate.passing(batch)
        return await super().write_batch(batch)


def run_row(principal: str = "alice", client_request_id: str = "", *, run_id: str | None = None) -> RunRow:
    """A new queued run's row."""
    now = time.time()
    return RunRow(
        run_id or str(uuid.uuid4()), principal, client_request_id, QUEUED, now, now, None, b"summary", '{"v": 1}'
    )


async def new_run(store: EventStore, owner: str = "A", *, lease: float = 60.0, principal: str = "alice") -> RunRow:
    """A run inserted and held by `owner` (epoch 1); a negative lease has already run out."""
    result = await store.insert_run(
        run_row(principal), owner=owner, lease_seconds=lease, max_active_per_principal=1_000_000
    )
    assert result.outcome is InsertOutcome.CREATED
    assert result.row is not None
    return result.row


def events(run_id: str, first: int, count: int) -> list[StoredEvent]:
    """`count` events of a run from seq `first` on, each carrying its own seq."""
    return [StoredEvent(run_id, s, f"{run_id}#{s}".encode()) for s in range(first, first + count)]


def batch_of(*parts: tuple[RunRow, int, int], runs: list[RunRow] | None = None) -> Batch:
    """Events (run, first seq, count) of runs, fenced with each run's epoch as given by its row."""
    evs = [e for row, first, count in parts for e in events(row.run_id, first, count)]
    rows = runs or []
    epochs = {row.run_id: row.epoch for row, _, _ in parts} | {r.run_id: r.epoch for r in rows}
    return Batch(evs, rows, [], epochs)


@dataclass
class Heard:
    """What a store's listener delivered, with a way to wait for it."""

    commits: list[dict[str, int]] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    releases: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_commit(self, newest: Mapping[str, int]) -> None:
        """The listener's commit callback."""
        self.commits.append(dict(newest))
        self.changed.set()

    def on_cancel(self, run_id: str) -> None:
        """The listener's cancel callback."""
        self.cancels.append(run_id)
        self.changed.set()

    def on_released(self) -> None:
        """The listener's released-leases callback."""
        self.releases += 1
        self.changed.set()

    async def until(self, done: object) -> None:
        """Wait (hang guard only) until `done()` holds."""
        assert callable(done)
        async with asyncio.timeout(HANG_GUARD):
            while not done():
                self.changed.clear()
                await self.changed.wait()


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """The file read-only for this process, even as root (who ignores modes: then it is made immutable)."""
    mode = path.stat().st_mode
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


@contextlib.contextmanager
def commits_held(db: Path) -> Iterator[None]:
    """Hold the SQLite file's write lock: the server's commits wait until the block ends (a stuck disk)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("COMMIT")
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def writes_held(target: Target) -> AsyncIterator[None]:
    """Hold the server's event writes from outside until the block ends, whatever process the server runs in.

    SQLite: its write lock (`commits_held`). PostgreSQL: a lock on the events table that lets reads through and
    makes every INSERT wait (a commit that hangs, as on a stuck disk).
    """
    if target.url is None:
        with commits_held(target.db):
            yield
        return
    conn = await asyncpg.connect(target.url, timeout=HANG_GUARD)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()
