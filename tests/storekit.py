"""Helpers for the store tests: open stores of either kind on one database, make runs, wait for callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from facilitair.server.store.base import Batch, EventStore, InsertOutcome, RunRow, StoredEvent
from facilitair.server.store.postgres import PostgresStore
from facilitair.server.store.sqlite import SqliteStore

KINDS = ("sqlite", "postgresql")
QUEUED, RUNNING, COMPLETED, INTERRUPTED = 1, 2, 3, 6
HANG_GUARD = 15.0


@dataclass(frozen=True)
class Target:
    """Where the stores of a test live: a SQLite file or a PostgreSQL database."""

    kind: str
    where: str  # the file's path or the database's URL


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
        if self.target.kind == "sqlite":
            return SqliteStore(Path(self.target.where))
        return PostgresStore(self.target.where)

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


@pytest.fixture(params=KINDS)
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """Each store test runs on a SQLite file and on a PostgreSQL database of its own."""
    if request.param == "sqlite":
        return Target("sqlite", str(tmp_path / "store.sqlite3"))
    url: str = request.getfixturevalue("pg_url")
    return Target("postgresql", url)


@pytest.fixture
async def stores(store_target: Target) -> AsyncIterator[Stores]:
    """The stores of one test, closed afterwards."""
    made = Stores(store_target)
    try:
        yield made
    finally:
        await made.close_all()


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
