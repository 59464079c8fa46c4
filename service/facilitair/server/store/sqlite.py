"""The default store: one embedded SQLite file in WAL mode with durable commits, for one process.

sqlite3 blocks, so each connection lives on its own thread: one writer (every write, in order) and one
reader, which WAL lets run alongside the writer. `synchronous=FULL` makes every commit durable across power
loss; the event log's group commits keep that affordable on the per-token path. Leases and epochs work as on
PostgreSQL (the writer thread and BEGIN IMMEDIATE serialise them), by the machine's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from facilitair.server.store import sqlite_schema
from facilitair.server.store.base import (
    CACHE_COLUMNS,
    CACHE_STATS,
    DELETE_BATCH,
    RATE_WINDOW,
    UNFINISHED_SQL,
    Batch,
    CacheEntry,
    CacheStats,
    Checkpoint,
    Claim,
    InsertOutcome,
    InsertResult,
    OnCancel,
    OnCommit,
    OnReleased,
    RenewResult,
    RunRow,
    StoreUnavailable,
    WebhookStore,
    id_prefix_bounds,
    rate_limited,
)
from facilitair.server.store.sqlite_batch import chunks, immediate, marks, write_once
from facilitair.server.store.sqlite_webhooks import SqliteWebhooks

T = TypeVar("T")

_RUN_COLUMNS = (
    "run_id, principal, client_request_id, state, created_at, updated_at, finished_at, summary, spec, "
    "owner, epoch, lease_expires_at, cancel_reason, traceparent, trace_stretch"
)

# SQLite errors that mean "cannot write now" and what to say about them (SQLite's own words hold no path).
_UNAVAILABLE = {
    "database or disk is full": "database or disk is full",
    "readonly database": "the database is read-only",
    "disk i/o error": "disk I/O error",
    "unable to open database file": "unable to open the database file",
    "database is locked": "the database is locked by another process",
}


def unavailable_cause(exc: sqlite3.Error) -> str | None:
    """The plain cause when `exc` means the store cannot work now, else None."""
    text = str(exc).lower()
    for needle, cause in _UNAVAILABLE.items():
        if needle in text:
            return f"the SQLite store cannot write: {cause}"
    return None


def _row(values: Sequence[object]) -> RunRow:
    return RunRow(*values)  # type: ignore[arg-type]


def _last_seq(conn: sqlite3.Connection, run_id: str) -> int:
    row = conn.execute("SELECT MAX(seq) FROM events WHERE run_id=?", (run_id,)).fetchone()
    return int(row[0] or 0)


class _Connection:
    """One connection on its own thread, opened on first use and again after the store became unavailable."""

    def __init__(self, path: Path, name: str, max_pages: int | None) -> None:
        self.path = path
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-{name}")
        self._max_pages = max_pages
        self._conn: sqlite3.Connection | None = None

    def get(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA busy_timeout=5000")
                if self._max_pages is not None:
                    conn.execute(f"PRAGMA max_page_count={int(self._max_pages)}")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def drop(self) -> None:
        """Close the connection; the next call reopens it (a file opened read-only stays so until then)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return fn(self.get())
            except sqlite3.Error as exc:
                cause = unavailable_cause(exc)
                if cause is None:
                    raise
                self.drop()
                raise StoreUnavailable(cause) from None

        return await asyncio.get_running_loop().run_in_executor(self.thread, call)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.thread, self.drop)
        self.thread.shutdown(wait=True)


class SqliteStore:
    """EventStore on a SQLite file."""

    kind = "sqlite"
    shared = False

    def __init__(self, path: Path, *, max_pages: int | None = None) -> None:
        """A store on `path`; `max_pages` caps the file (PRAGMA max_page_count): past it writes fail as when full."""
        self._path = path
        self._writer = _Connection(path, "writer", max_pages)
        self._reader = _Connection(path, "reader", None)
        self.webhooks: WebhookStore = SqliteWebhooks(self._writer.run, self._reader.run)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    async def open(self) -> None:
        """Create the file and its folder, and create or migrate the schema."""

        def setup(conn: sqlite3.Connection) -> None:
            sqlite_schema.migrate(conn)

        self._path.parent.mkdir(parents=True, exist_ok=True)
        await self._writer.run(setup)

    async def close(self) -> None:
        """Close both connections and their threads."""
        await self._writer.close()
        await self._reader.close()

    # -- writes ---------------------------------------------------------------------------------------------

    async def insert_run(
        self,
        row: RunRow,
        *,
        owner: str,
        lease_seconds: float,
        max_active_per_principal: int,
        max_started_per_minute: float | None = None,
    ) -> InsertResult:
        """The existing run for the request id, LIMITED, or the new run held by `owner` (epoch 1)."""

        def insert(conn: sqlite3.Connection) -> InsertResult:
            with immediate(conn):
                if row.client_request_id:
                    found = conn.execute(
                        f"SELECT {_RUN_COLUMNS} FROM runs WHERE principal=? AND client_request_id=?",
                        (row.principal, row.client_request_id),
                    ).fetchone()
                    if found is not None:
                        return InsertResult(InsertOutcome.EXISTING, _row(found), 0)
                active = int(
                    conn.execute(
                        f"SELECT count(*) FROM runs WHERE principal=? AND {UNFINISHED_SQL}", (row.principal,)
                    ).fetchone()[0]
                )
                if active >= max_active_per_principal:
                    return InsertResult(InsertOutcome.LIMITED, None, active)
                recent, oldest = conn.execute(
                    "SELECT count(*), min(created_at) FROM runs WHERE principal=? AND created_at > ?",
                    (row.principal, row.created_at - RATE_WINDOW),
                ).fetchone()
                limited = rate_limited(max_started_per_minute, int(recent), oldest, row, active)
                if limited is not None:
                    return limited
                stored = dataclasses.replace(
                    row, owner=owner, epoch=1, lease_expires_at=time.time() + lease_seconds, cancel_reason=None
                )
                conn.execute(f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({marks(15)})", dataclasses.astuple(stored))
                return InsertResult(InsertOutcome.CREATED, stored, active)

        return await self._writer.run(insert)

    async def write_batch(self, batch: Batch) -> set[str]:
        """One transaction for the whole batch, written with multi-row INSERTs; returns the refused runs.

        Not executemany: it steps once per row and releases and re-takes the GIL around each step, and while
        the event loop thread is busy every re-take waits up to the switch interval, so a commit of n rows took
        up to n switch intervals (docs/benchmarks.md: one 2,000-event commit took 1.1 s).

        The same batch again (a retry after an unclear failure) changes nothing and returns the same runs; a
        batch that conflicts with other stored events raises IntegrityError.
        """
        return await self._writer.run(lambda conn: write_once(conn, batch))

    async def listen(self, on_commit: OnCommit, on_cancel: OnCancel, on_released: OnReleased) -> None:
        """Nothing to do: one process writes and watches, and it knows its own commits."""

    async def request_cancel(self, run_id: str, reason: str) -> bool:
        """Record the reason (the first one stays) on an unfinished run."""

        def mark(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                f"UPDATE runs SET cancel_reason = COALESCE(cancel_reason, ?) WHERE run_id=? AND {UNFINISHED_SQL}",
                (reason, run_id),
            )
            return cur.rowcount > 0

        return await self._writer.run(mark)

    async def note_trace_stretch(self, run_id: str, epoch: int, traceparent: str) -> None:
        """Store the stretch's traceparent while `epoch` holds the run."""

        def note(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE runs SET trace_stretch=? WHERE run_id=? AND epoch=?", (traceparent, run_id, epoch))

        await self._writer.run(note)

    async def renew_leases(self, owner: str, epochs: Mapping[str, int], lease_seconds: float) -> RenewResult:
        """Extend the leases still held; the others are lost."""

        def renew(conn: sqlite3.Connection) -> RenewResult:
            held: dict[str, str | None] = {}
            until = time.time() + lease_seconds
            with immediate(conn):
                for chunk in chunks(list(epochs.items())):
                    cur = conn.execute(
                        f"UPDATE runs SET lease_expires_at=? WHERE owner=? AND (run_id, epoch) IN "
                        f"(VALUES {','.join(['(?,?)'] * len(chunk))}) RETURNING run_id, cancel_reason",
                        [until, owner, *(v for pair in chunk for v in pair)],
                    )
                    held.update((str(r[0]), r[1]) for r in cur.fetchall())
            return RenewResult(frozenset(set(epochs) - set(held)), {k: v for k, v in held.items() if v is not None})

        return await self._writer.run(renew)

    async def claim_expired(
        self, owner: str, lease_seconds: float, limit: int, *, ignore_leases: bool = False
    ) -> list[Claim]:
        """Take over unfinished runs whose lease ran out (all of them with ignore_leases), oldest first."""

        def claim(conn: sqlite3.Connection) -> list[Claim]:
            now = time.time()
            expired = "" if ignore_leases else " AND (lease_expires_at IS NULL OR lease_expires_at < ?)"
            rows: list[RunRow] = []
            with immediate(conn):
                candidates = conn.execute(
                    f"SELECT run_id, epoch FROM runs WHERE {UNFINISHED_SQL}{expired} "
                    "ORDER BY created_at, run_id LIMIT ?",
                    (limit,) if ignore_leases else (now, limit),
                ).fetchall()
                for run_id, epoch in candidates:
                    got = conn.execute(
                        f"UPDATE runs SET owner=?, epoch=epoch+1, lease_expires_at=? WHERE run_id=? AND epoch=? "
                        f"RETURNING {_RUN_COLUMNS}",
                        (owner, now + lease_seconds, run_id, epoch),
                    ).fetchone()
                    if got is not None:
                        rows.append(_row(got))
            # Read after the commit: no write under an older epoch can land from now on.
            return [Claim(r, _last_seq(conn, r.run_id)) for r in rows]

        return await self._writer.run(claim)

    async def probe(self) -> None:
        """One durable write (a transaction that rewrites the schema version): full or read-only fails it."""

        def touch(conn: sqlite3.Connection) -> None:
            with immediate(conn):
                conn.execute("UPDATE schema_version SET version = version")

        await self._writer.run(touch)

    async def release_leases(self, owner: str, epochs: Mapping[str, int]) -> None:
        """Expire the leases still held, now."""

        def release(conn: sqlite3.Connection) -> None:
            with immediate(conn):
                for chunk in chunks(list(epochs.items())):
                    conn.execute(
                        f"UPDATE runs SET lease_expires_at=0 WHERE owner=? AND (run_id, epoch) IN "
                        f"(VALUES {','.join(['(?,?)'] * len(chunk))})",
                        [owner, *(v for pair in chunk for v in pair)],
                    )

        await self._writer.run(release)

    async def delete_finished_before(self, cutoff: float, *, batch_size: int = DELETE_BATCH) -> int:
        """Retention: drop old finished runs with their events and checkpoints, `batch_size` runs a transaction.

        Each transaction is its own call on the writer thread, so event batches go in between.
        """

        def delete(conn: sqlite3.Connection) -> int:
            with immediate(conn):
                ids = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT run_id FROM runs WHERE finished_at < ? AND NOT {UNFINISHED_SQL} LIMIT ?",
                        (cutoff, batch_size),
                    )
                ]
                for table in ("events", "checkpoints", "webhook_deliveries", "runs"):
                    conn.execute(f"DELETE FROM {table} WHERE run_id IN ({marks(len(ids))})", ids)
            return len(ids)

        total = 0
        while True:
            removed = await self._writer.run(delete)
            total += removed
            if removed < batch_size:
                return total

    # -- reads ----------------------------------------------------------------------------------------------

    async def read_events(self, run_id: str, after_seq: int, limit: int) -> list[bytes]:
        """Events after a seq, in order."""

        def read(conn: sqlite3.Connection) -> list[bytes]:
            cur = conn.execute(
                "SELECT data FROM events WHERE run_id=? AND seq>? ORDER BY seq LIMIT ?", (run_id, after_seq, limit)
            )
            return [bytes(r[0]) for r in cur]

        return await self._reader.run(read)

    async def last_seq(self, run_id: str) -> int:
        """The highest seq of a run."""
        return await self._reader.run(lambda conn: _last_seq(conn, run_id))

    async def _one(self, sql: str, args: tuple[object, ...]) -> RunRow | None:
        def read(conn: sqlite3.Connection) -> RunRow | None:
            row = conn.execute(sql, args).fetchone()
            return None if row is None else _row(row)

        return await self._reader.run(read)

    async def _many(self, sql: str, args: tuple[object, ...]) -> list[RunRow]:
        return await self._reader.run(lambda conn: [_row(r) for r in conn.execute(sql, args)])

    async def get_run(self, run_id: str) -> RunRow | None:
        """A run by id."""
        return await self._one(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id=?", (run_id,))

    async def find_run(self, principal: str, client_request_id: str) -> RunRow | None:
        """A run by idempotency key."""
        return await self._one(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE principal=? AND client_request_id=?", (principal, client_request_id)
        )

    async def find_runs_by_prefix(self, principal: str, prefix: str, limit: int) -> list[RunRow]:
        """A range scan of the primary key's index; `+principal` keeps the planner off runs_by_principal."""
        low, high = id_prefix_bounds(prefix)
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id >= ?"
        args: list[object] = [low]
        if high is not None:
            sql += " AND run_id < ?"
            args.append(high)
        sql += " AND substr(run_id, 1, ?) = ? AND +principal = ? ORDER BY run_id LIMIT ?"
        args += [len(prefix), prefix, principal, limit]
        return await self._many(sql, tuple(args))

    async def count_active(self, principal: str) -> int:
        """The principal's unfinished runs."""
        return await self._reader.run(
            lambda conn: int(
                conn.execute(
                    f"SELECT count(*) FROM runs WHERE principal=? AND {UNFINISHED_SQL}", (principal,)
                ).fetchone()[0]
            )
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
        """Queued, running or interrupted runs, oldest first."""
        return await self._many(f"SELECT {_RUN_COLUMNS} FROM runs WHERE {UNFINISHED_SQL} ORDER BY created_at", ())

    async def checkpoints(self, run_id: str) -> list[Checkpoint]:
        """Checkpoints by stage."""

        def read(conn: sqlite3.Connection) -> list[Checkpoint]:
            cur = conn.execute("SELECT run_id, stage, data FROM checkpoints WHERE run_id=? ORDER BY stage", (run_id,))
            return [Checkpoint(str(r[0]), int(r[1]), str(r[2])) for r in cur]

        return await self._reader.run(read)

    async def recent_checkpoints(self, runs: int) -> list[Checkpoint]:
        """The checkpoints of the `runs` most recently finished runs (runs_by_finish picks them)."""

        def read(conn: sqlite3.Connection) -> list[Checkpoint]:
            cur = conn.execute(
                "SELECT c.run_id, c.stage, c.data FROM checkpoints c JOIN (SELECT run_id FROM runs "
                "WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?) r ON r.run_id = c.run_id",
                (runs,),
            )
            return [Checkpoint(str(r[0]), int(r[1]), str(r[2])) for r in cur]

        return await self._reader.run(read)

    # -- the response cache ------------------------------------------------------------------------------------

    async def cache_get(self, key: str) -> CacheEntry | None:
        """The response cache entry stored under `key`, if any."""

        def read(conn: sqlite3.Connection) -> CacheEntry | None:
            row = conn.execute(f"SELECT {CACHE_COLUMNS} FROM response_cache WHERE key=?", (key,)).fetchone()
            return None if row is None else CacheEntry(*row)

        return await self._reader.run(read)

    async def cache_put(self, entry: CacheEntry) -> None:
        """Store a response cache entry, replacing the one under its key."""
        values = (*dataclasses.astuple(entry)[:-1], time.time())

        def put(conn: sqlite3.Connection) -> None:
            with immediate(conn):
                conn.execute(f"INSERT OR REPLACE INTO response_cache ({CACHE_COLUMNS}) VALUES ({marks(10)})", values)

        await self._writer.run(put)

    async def cache_stats(self, principal: str | None = None) -> CacheStats:
        """What the response cache holds: all of it, or one caller's entries."""
        where, args = ("WHERE principal=?", (principal,)) if principal is not None else ("", ())

        def read(conn: sqlite3.Connection) -> CacheStats:
            row = conn.execute(f"{CACHE_STATS} {where}", args).fetchone()
            return CacheStats(*row)

        return await self._reader.run(read)

    async def cache_clear(self, principal: str | None = None) -> int:
        """Delete the response cache's entries (all, or one caller's)."""
        where, args = ("WHERE principal=?", (principal,)) if principal is not None else ("", ())

        def clear(conn: sqlite3.Connection) -> int:
            with immediate(conn):
                return conn.execute(f"DELETE FROM response_cache {where}", args).rowcount

        return await self._writer.run(clear)

    async def cache_expire(self, cutoff: float) -> int:
        """Retention: delete response cache entries made before `cutoff`."""

        def expire(conn: sqlite3.Connection) -> int:
            with immediate(conn):
                return conn.execute("DELETE FROM response_cache WHERE created_at < ?", (cutoff,)).rowcount

        return await self._writer.run(expire)
