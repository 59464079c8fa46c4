"""The default store: one embedded SQLite file in WAL mode with durable commits.

sqlite3 blocks, so each connection lives on its own thread: one writer (all batches, in order) and
one reader, which WAL lets run alongside the writer. `synchronous=FULL` makes every commit durable
across power loss; the event log's group commits keep that affordable on the per-token path.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from facilitair.server.store.base import Batch, Checkpoint, RunRow

T = TypeVar("T")

# Run states that may still produce events (RunState QUEUED, RUNNING, INTERRUPTED).
UNFINISHED_STATES = (1, 2, 6)

_SCHEMA = """
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

_RUN_COLUMNS = "run_id, principal, client_request_id, state, created_at, updated_at, finished_at, summary, spec"


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


ROWS_PER_INSERT = 300  # 900 parameters per statement at most; SQLite allows 32,766


def _insert_rows(conn: sqlite3.Connection, head: str, rows: list[tuple[object, ...]], tail: str = "") -> None:
    """`head VALUES (..),(..) tail`, ROWS_PER_INSERT rows per statement at most."""
    if not rows:
        return
    one = "(" + ",".join("?" * len(rows[0])) + ")"
    for i in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[i : i + ROWS_PER_INSERT]
        conn.execute(f"{head} VALUES {','.join([one] * len(chunk))} {tail}", [v for row in chunk for v in row])


def _row(values: Sequence[object]) -> RunRow:
    return RunRow(*values)  # type: ignore[arg-type]


class SqliteStore:
    """EventStore on a SQLite file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    async def _on(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    async def open(self) -> None:
        """Create the file, its folder and the schema."""

        def setup() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _connect(self._path)
            self._writer.executescript(_SCHEMA)

        await self._on(self._writer_thread, setup)

        def open_reader() -> None:
            self._reader = _connect(self._path)

        await self._on(self._reader_thread, open_reader)

    async def close(self) -> None:
        """Close both connections and their threads."""
        if self._writer is not None:
            await self._on(self._writer_thread, self._writer.close)
        if self._reader is not None:
            await self._on(self._reader_thread, self._reader.close)
        self._writer_thread.shutdown(wait=True)
        self._reader_thread.shutdown(wait=True)

    def _w(self) -> sqlite3.Connection:
        assert self._writer is not None, "store not opened"
        return self._writer

    def _r(self) -> sqlite3.Connection:
        assert self._reader is not None, "store not opened"
        return self._reader

    async def write_batch(self, batch: Batch) -> None:
        """One transaction for the whole batch, written with multi-row INSERTs.

        Not executemany: it steps once per row and releases and re-takes the GIL around each step, and
        while the event loop thread is busy every re-take waits up to the switch interval, so a commit
        of n rows took up to n switch intervals (bench/README: one 2,000-event commit took 1.1 s).
        """

        def write() -> None:
            conn = self._w()
            # Most commits are token events only: one INSERT statement is its own atomic, durable
            # transaction, so BEGIN and COMMIT (each a GIL release and re-take) are left out.
            if not batch.runs and not batch.checkpoints and len(batch.events) <= ROWS_PER_INSERT:
                _insert_rows(
                    conn, "INSERT INTO events (run_id, seq, data)", [(e.run_id, e.seq, e.data) for e in batch.events]
                )
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                _insert_rows(
                    conn,
                    f"INSERT INTO runs ({_RUN_COLUMNS})",
                    [
                        (r.run_id, r.principal, r.client_request_id, r.state, r.created_at, r.updated_at,
                         r.finished_at, r.summary, r.spec)
                        for r in batch.runs
                    ],
                    "ON CONFLICT(run_id) DO UPDATE SET state=excluded.state, updated_at=excluded.updated_at, "
                    "finished_at=excluded.finished_at, summary=excluded.summary",
                )  # fmt: skip
                _insert_rows(
                    conn, "INSERT INTO events (run_id, seq, data)", [(e.run_id, e.seq, e.data) for e in batch.events]
                )
                _insert_rows(
                    conn,
                    "INSERT OR REPLACE INTO checkpoints (run_id, stage, data)",
                    [(c.run_id, c.stage, c.data) for c in batch.checkpoints],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._on(self._writer_thread, write)

    async def read_events(self, run_id: str, after_seq: int, limit: int) -> list[bytes]:
        """Events after a seq, in order."""

        def read() -> list[bytes]:
            cur = self._r().execute(
                "SELECT data FROM events WHERE run_id=? AND seq>? ORDER BY seq LIMIT ?", (run_id, after_seq, limit)
            )
            return [bytes(r[0]) for r in cur]

        return await self._on(self._reader_thread, read)

    async def last_seq(self, run_id: str) -> int:
        """The highest seq of a run."""

        def read() -> int:
            row = self._r().execute("SELECT MAX(seq) FROM events WHERE run_id=?", (run_id,)).fetchone()
            return int(row[0] or 0)

        return await self._on(self._reader_thread, read)

    async def _one(self, sql: str, args: tuple[object, ...]) -> RunRow | None:
        def read() -> RunRow | None:
            row = self._r().execute(sql, args).fetchone()
            return None if row is None else _row(row)

        return await self._on(self._reader_thread, read)

    async def _many(self, sql: str, args: tuple[object, ...]) -> list[RunRow]:
        def read() -> list[RunRow]:
            return [_row(r) for r in self._r().execute(sql, args)]

        return await self._on(self._reader_thread, read)

    async def get_run(self, run_id: str) -> RunRow | None:
        """A run by id."""
        return await self._one(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id=?", (run_id,))

    async def find_run(self, principal: str, client_request_id: str) -> RunRow | None:
        """A run by idempotency key."""
        return await self._one(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE principal=? AND client_request_id=?", (principal, client_request_id)
        )

    async def list_runs(
        self, principal: str, state: int | None, before: tuple[float, str] | None, limit: int
    ) -> list[RunRow]:
        """A page of runs, newest first (keyset pagination on created_at, run_id)."""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE principal=?"
        args: list[object] = [principal]
        if state is not None:
            sql += " AND state=?"
            args.append(state)
        if before is not None:
            sql += " AND (created_at < ? OR (created_at = ? AND run_id < ?))"
            args += [before[0], before[0], before[1]]
        sql += " ORDER BY created_at DESC, run_id DESC LIMIT ?"
        args.append(limit)
        return await self._many(sql, tuple(args))

    async def unfinished_runs(self) -> list[RunRow]:
        """Runs a restarted server must resume, oldest first."""
        marks = ",".join("?" * len(UNFINISHED_STATES))
        return await self._many(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN ({marks}) ORDER BY created_at", UNFINISHED_STATES
        )

    async def checkpoints(self, run_id: str) -> list[Checkpoint]:
        """Checkpoints by stage."""

        def read() -> list[Checkpoint]:
            cur = self._r().execute(
                "SELECT run_id, stage, data FROM checkpoints WHERE run_id=? ORDER BY stage", (run_id,)
            )
            return [Checkpoint(str(r[0]), int(r[1]), str(r[2])) for r in cur]

        return await self._on(self._reader_thread, read)

    async def delete_finished_before(self, cutoff: float) -> int:
        """Retention: drop old finished runs with their events and checkpoints."""
        marks = ",".join("?" * len(UNFINISHED_STATES))

        def delete() -> int:
            conn = self._w()
            conn.execute("BEGIN IMMEDIATE")
            try:
                ids = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT run_id FROM runs WHERE finished_at < ? AND state NOT IN ({marks})",
                        (cutoff, *UNFINISHED_STATES),
                    )
                ]
                for table in ("events", "checkpoints", "runs"):
                    conn.executemany(f"DELETE FROM {table} WHERE run_id=?", [(i,) for i in ids])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return len(ids)

        return await self._on(self._writer_thread, delete)
