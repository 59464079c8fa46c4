"""What only the SQLite store does: migrate a file made before schema versions, and report a full or read-only
database as StoreUnavailable with its plain cause, then work again once the condition clears. Real files only.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from facilitair.server.store import sqlite_schema
from facilitair.server.store.base import Batch, Checkpoint, SchemaError, StoredEvent, StoreUnavailable
from facilitair.server.store.sqlite import SqliteStore
from tests.harness.stores import COMPLETED, INTERRUPTED, batch_of, events, new_run, read_only

# The schema as it was before versions were recorded (store/sqlite.py at main, before the lease columns).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    client_request_id TEXT NOT NULL,
    state INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    summary BLOB NOT NULL,
    spec TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_principal ON runs (principal, created_at DESC, run_id DESC);
CREATE UNIQUE INDEX IF NOT EXISTS runs_by_request ON runs (principal, client_request_id)
    WHERE client_request_id != '';
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL,
    stage INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, stage)
) WITHOUT ROWID;
"""


def _old_database(path: Path) -> None:
    """A database as the previous version left it: one interrupted run, one completed, events and checkpoints."""
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.executemany(
        "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            ("run-old", "alice", "req-1", INTERRUPTED, 10.0, 11.0, None, b"summary-1", '{"task": "old"}'),
            ("run-done", "alice", "", COMPLETED, 5.0, 6.0, 6.0, b"summary-2", '{"task": "done"}'),
        ],
    )
    conn.executemany("INSERT INTO events VALUES (?, ?, ?)", [("run-old", s, f"e{s}".encode()) for s in (1, 2, 3)])
    conn.execute("INSERT INTO checkpoints VALUES ('run-old', 1, 'architect output')")
    conn.commit()
    conn.close()


async def test_a_database_from_before_schema_versions_is_migrated_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    _old_database(path)
    store = SqliteStore(path)
    await store.open()
    try:
        old = await store.get_run("run-old")
        assert old is not None
        assert (old.principal, old.client_request_id, old.state, old.summary, old.spec) == (
            "alice", "req-1", INTERRUPTED, b"summary-1", '{"task": "old"}'
        )  # fmt: skip
        assert (old.owner, old.epoch, old.lease_expires_at, old.cancel_reason) == ("", 0, None, None)
        assert await store.read_events("run-old", 0, 10) == [b"e1", b"e2", b"e3"]
        assert [(c.stage, c.data) for c in await store.checkpoints("run-old")] == [(1, "architect output")]
        assert await store.find_run("alice", "req-1") == old
        assert [r.run_id for r in await store.list_runs("alice", None, None, 10)] == ["run-old", "run-done"]
        assert [r.run_id for r in await store.unfinished_runs()] == ["run-old"]

        # The old run is taken over like any other and goes on from its last seq.
        (claim,) = await store.claim_expired("me", 10.0, 10)
        assert (claim.row.run_id, claim.row.epoch, claim.last_seq) == ("run-old", 1, 3)
        assert await store.write_batch(batch_of((claim.row, 4, 1))) == set()
        assert await store.last_seq("run-old") == 4
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(sqlite_schema.VERSION,)]
    reopened = SqliteStore(path)
    await reopened.open()  # a second open finds the current version and changes nothing
    await reopened.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE schema_version SET version = 7")
        conn.commit()
    with pytest.raises(SchemaError, match=rf"version 7, newer than this server knows \({sqlite_schema.VERSION}\)"):
        await SqliteStore(path).open()


async def test_a_full_database_is_unavailable_until_space_is_freed(tmp_path: Path) -> None:
    path = tmp_path / "full.sqlite3"
    store = SqliteStore(path, max_pages=64)  # 64 pages of 4 KiB: the "disk" is 256 KiB
    await store.open()
    try:
        old = await new_run(store)
        big = 4000
        seq = 0

        async def fill() -> None:
            nonlocal seq
            while seq < 1000:  # full within about 60 events; the bound keeps a broken cap from looping forever
                assert (
                    await store.write_batch(Batch([_big(old.run_id, seq + 1, big)], [], [], {old.run_id: 1})) == set()
                )
                seq += 1

        with pytest.raises(StoreUnavailable) as full:
            await fill()
        assert str(full.value) == "the SQLite store cannot write: database or disk is full"
        assert full.value.__cause__ is None
        assert "cannot rollback" not in str(full.value)

        # The transaction path (a run row with the events) meets the same condition, and says the same.
        live = await store.get_run(old.run_id)
        assert live is not None
        with pytest.raises(StoreUnavailable, match="database or disk is full"):
            await store.write_batch(
                Batch([_big(old.run_id, seq + 1, big)], [replace(live, updated_at=time.time())], [], {old.run_id: 1})
            )
        assert await store.last_seq(old.run_id) == seq, "nothing of a failed batch was written"

        # Retention frees the pages; the same store writes again.
        finished = replace(live, state=COMPLETED, finished_at=1.0)
        with contextlib.suppress(StoreUnavailable):
            await store.write_batch(Batch([], [finished], [], {old.run_id: 1}))
        assert await store.delete_finished_before(2.0) == 1
        fresh = await new_run(store)
        assert await store.write_batch(batch_of((fresh, 1, 3))) == set()
        assert await store.write_batch(Batch([_big(fresh.run_id, 4, big)], [], [], {fresh.run_id: 1})) == set()
        assert await store.last_seq(fresh.run_id) == 4
    finally:
        await store.close()


def _big(run_id: str, seq: int, size: int) -> StoredEvent:
    return StoredEvent(run_id, seq, os.urandom(size))


async def test_a_read_only_database_is_unavailable_until_it_is_writable(tmp_path: Path) -> None:
    path = tmp_path / "ro.sqlite3"
    first = SqliteStore(path)
    await first.open()
    run = await new_run(first)
    assert await first.write_batch(batch_of((run, 1, 2))) == set()
    await first.close()  # the last connection checkpoints the WAL into the file and removes it

    store = SqliteStore(path)
    with read_only(path):
        await store.open()  # nothing to migrate: opening needs no write
        assert await store.last_seq(run.run_id) == 2
        with pytest.raises(StoreUnavailable) as err:
            await store.write_batch(batch_of((run, 3, 1)))
        assert str(err.value) == "the SQLite store cannot write: the database is read-only"
        with pytest.raises(StoreUnavailable, match="read-only"):
            await store.write_batch(Batch([], [run], [Checkpoint(run.run_id, 1, "x")], {run.run_id: 1}))
    try:
        assert await store.write_batch(batch_of((run, 3, 1))) == set()
        assert await store.read_events(run.run_id, 0, 10) == [e.data for e in events(run.run_id, 1, 3)]
    finally:
        await store.close()
