"""The shared store: PostgreSQL through asyncpg, for any number of replicas on one database.

Connections: one writer connection takes every batch, in order (a batch is ONE statement: pg_sql.WRITE_BATCH);
a small pool serves reads and the lease operations; a third kind, the listener, only LISTENs. A connection
that breaks is replaced at the next call; the call that met the break gets StoreUnavailable.

asyncpg over psycopg 3: on the per-token path it took about half the client CPU per event at every batch
size, the backend's share being equal (bench/pg_driver.py, numbers in the commit that chose it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from facilitair.server.store import pg_sql
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
from facilitair.server.store.pg_errors import mask_url, scrub, unavailable
from facilitair.server.store.pg_listen import PING_EVERY, Listener
from facilitair.server.store.pg_webhooks import PgWebhooks
from facilitair.server.store.retry import Found, without_events, written_before

T = TypeVar("T")
# A connection of its own (the writer) or one lent by the pool: the statements run the same on both.
Conn = asyncpg.Connection | PoolConnectionProxy
CONNECT_TIMEOUT = 10.0
# The longest one statement may take (a lock held by a stuck transaction, a server that stopped answering).
COMMAND_TIMEOUT = 30.0
READERS = 4


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Lend pooled connections on as they are (asyncpg rolls back an open transaction itself).

    asyncpg's default reset (RESET ALL, UNLISTEN *, ...) is one more round trip on every release: a 1000-event
    replay took 1.7 ms with it, 1.0 ms without (p50, bench/pg_driver.py). The store sets no session state: no SET,
    no LISTEN (the listener has its own connection), only transaction-scoped advisory locks.
    """


def _row(record: asyncpg.Record) -> RunRow:
    return RunRow(*record)


class PostgresStore:
    """EventStore on a PostgreSQL database, shared by every replica."""

    kind = "postgresql"
    shared = True

    def __init__(
        self,
        url: str,
        *,
        readers: int = READERS,
        command_timeout: float = COMMAND_TIMEOUT,
        listen_check: float = PING_EVERY,
    ) -> None:
        """A store on the database at `url` (postgresql://user:password@host:port/db?options).

        `listen_check`: how often the LISTEN connection is pinged, and how long an answer may take, so that a
        database gone silent (a machine lost, a network cut) is noticed and the listener reconnects.
        """
        self._url = url
        self._readers = readers
        self._command_timeout = command_timeout
        self._listen_check = listen_check
        self._writer: asyncpg.Connection | None = None
        self._writer_lock = asyncio.Lock()
        self._pool: asyncpg.Pool | None = None
        self._listener: Listener | None = None
        # Tags this store's commit notifications, so its own listener skips them.
        self.tag = uuid.uuid4().hex[:8]
        self.webhooks: WebhookStore = PgWebhooks(self._on_pool)

    def __repr__(self) -> str:
        return f"PostgresStore({mask_url(self._url)!r})"

    # -- connections ----------------------------------------------------------------------------------------

    async def _connect(self, role: str = "writer") -> asyncpg.Connection:
        """A new connection; any failure (refused, authentication, no such database) is StoreUnavailable."""
        try:
            return await asyncpg.connect(
                self._url,
                timeout=CONNECT_TIMEOUT,
                command_timeout=self._command_timeout,
                server_settings={"application_name": f"facilitair-{role}"},  # pg_stat_activity tells them apart
            )
        except Exception as exc:  # noqa: BLE001  (every way to fail: refused, DNS, TLS, auth, no such database)
            cause = scrub(str(exc) or type(exc).__name__, self._url)
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {mask_url(self._url)}: {cause}") from None

    async def open(self) -> None:
        """Connect the writer and the pool, and create or migrate the schema."""
        self._writer = await self._connect()
        try:
            await pg_sql.migrate(self._writer)
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=0,  # no connection kept open by force: none retried in the background while down
                max_size=self._readers,
                timeout=CONNECT_TIMEOUT,
                command_timeout=self._command_timeout,
                server_settings={"application_name": "facilitair-reader"},
                reset=_keep_session,
            )
        except BaseException as exc:
            await self.close()
            down = unavailable(exc, self._url) if isinstance(exc, Exception) else None
            if down is None:
                raise
            raise down from None

    async def close(self) -> None:
        """Stop listening, close the pool and the writer."""
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT)
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.terminate()

    async def _on_writer(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run on the writer connection (reopened if it broke), one call at a time, in order."""
        async with self._writer_lock:
            if self._writer is None or self._writer.is_closed():
                self._writer = await self._connect()
            try:
                return await fn(self._writer)
            except Exception as exc:
                down = unavailable(exc, self._url)
                if down is None:
                    raise
                self._writer.terminate()
                self._writer = None
                raise down from None

    async def _on_pool(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run on a pooled connection; one that broke is replaced by the pool at its next use."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("store not opened")
        try:
            conn = await pool.acquire(timeout=CONNECT_TIMEOUT)
        except Exception as exc:  # noqa: BLE001  (every way to fail to connect, as in _connect)
            cause = scrub(str(exc) or type(exc).__name__, self._url)
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {mask_url(self._url)}: {cause}") from None
        try:
            return await fn(conn)
        except Exception as exc:
            down = unavailable(exc, self._url)
            if down is None:
                raise
            raise down from None
        finally:
            await pool.release(conn)

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
        """Under an advisory lock on the principal: the existing run, LIMITED, or the new run (epoch 1)."""

        async def insert(conn: Conn) -> InsertResult:
            async with conn.transaction():
                # Serialises the inserts of one principal across every replica; later statements see their commits.
                await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", pg_sql.LOCK_CLASS, row.principal)
                found = await conn.fetchrow(
                    pg_sql.FIND_AND_COUNT, row.principal, row.client_request_id, row.created_at - RATE_WINDOW
                )
                assert found is not None
                if found["existing"] is not None:
                    existing = await conn.fetchrow(
                        f"SELECT {pg_sql.RUN_COLUMNS} FROM runs WHERE run_id = $1", found["existing"]
                    )
                    assert existing is not None
                    return InsertResult(InsertOutcome.EXISTING, _row(existing), 0)
                active = int(found["active"])
                if active >= max_active_per_principal:
                    return InsertResult(InsertOutcome.LIMITED, None, active)
                limited = rate_limited(max_started_per_minute, found["recent"], found["oldest_recent"], row, active)
                if limited is not None:
                    return limited
                created = await conn.fetchrow(
                    pg_sql.INSERT_RUN,
                    row.run_id, row.principal, row.client_request_id, row.state, row.created_at, row.updated_at,
                    row.finished_at, row.summary, row.spec, owner, float(lease_seconds), row.traceparent,
                )  # fmt: skip
                if created is None:
                    raise ValueError(f"run id {row.run_id!r} is taken")
                return InsertResult(InsertOutcome.CREATED, _row(created), active)

        return await self._on_pool(insert)

    async def write_batch(self, batch: Batch) -> set[str]:
        """The whole batch in one statement (one transaction, one round trip); returns the refused runs.

        The same batch again (a commit whose acknowledgement was lost, retried) changes nothing and returns the
        same runs; a batch that conflicts with other stored events raises UniqueViolationError.
        """
        if not batch.run_ids():
            return set()

        async def write(conn: Conn) -> set[str]:
            try:
                return await self._write(conn, batch)
            except asyncpg.UniqueViolationError:
                again = await self._written_before(conn, batch)
                if again is None:
                    raise
                return again

        return await self._on_writer(write)

    async def _write(self, conn: Conn, batch: Batch) -> set[str]:
        ids = batch.run_ids()
        epochs = {r: batch.epochs[r] for r in ids if r in batch.epochs}
        # One row and one checkpoint per key, the last one winning, as an upsert of each would.
        runs = list({r.run_id: r for r in batch.runs}.values())
        checkpoints = list({(c.run_id, c.stage): c for c in batch.checkpoints}.values())
        args: list[object] = [
            list(epochs), list(epochs.values()),
            [e.run_id for e in batch.events], [e.seq for e in batch.events], [e.data for e in batch.events],
            [r.run_id for r in runs], [r.state for r in runs], [r.updated_at for r in runs],
            [r.finished_at for r in runs], [r.summary for r in runs],
            [c.run_id for c in checkpoints], [c.stage for c in checkpoints], [c.data for c in checkpoints],
            self.tag,
        ]  # fmt: skip
        sql = pg_sql.WRITE_BATCH
        if batch.deliveries:
            d = batch.deliveries
            sql = pg_sql.WRITE_BATCH_WITH_DELIVERIES
            args += [[x.id for x in d], [x.run_id for x in d], [x.event_type for x in d], [x.url for x in d],
                     [x.payload for x in d], [x.created_at for x in d]]  # fmt: skip
        result = await conn.fetchrow(sql, *args)
        assert result is not None
        return ids - set(result["accepted"])

    async def _written_before(self, conn: Conn, batch: Batch) -> set[str] | None:
        """The refused runs if this very batch was committed before (see retry.py), else None."""
        rows = await conn.fetch(
            pg_sql.FIND_WRITTEN,
            [e.run_id for e in batch.events], [e.seq for e in batch.events], [e.data for e in batch.events],
        )  # fmt: skip
        found = {r["run_id"]: Found(r["given"], r["present"], r["same"]) for r in rows}
        epochs = {r["run_id"]: r["epoch"] for r in await conn.fetch(pg_sql.EPOCHS, list(found))}
        refused = written_before(batch, found, epochs)
        if refused is None:
            return None
        rest = without_events(batch)
        return refused | (await self._write(conn, rest) if rest.run_ids() else set())

    async def listen(self, on_commit: OnCommit, on_cancel: OnCancel, on_released: OnReleased) -> None:
        """Open the LISTEN connection (StoreUnavailable if it cannot) and keep it open until close()."""
        if self._listener is not None:
            raise RuntimeError("already listening")
        listener = Listener(
            lambda: self._connect("listener"),
            self.tag,
            on_commit,
            on_cancel,
            on_released,
            ping_every=self._listen_check,
            ping_timeout=self._listen_check,
        )
        await listener.start()
        self._listener = listener

    async def request_cancel(self, run_id: str, reason: str) -> bool:
        """Record the cancel on an unfinished run (the first reason stays) and notify every replica."""

        async def mark(conn: Conn) -> bool:
            return await conn.fetchrow(pg_sql.REQUEST_CANCEL, run_id, reason) is not None

        return await self._on_pool(mark)

    async def note_trace_stretch(self, run_id: str, epoch: int, traceparent: str) -> None:
        """Store the stretch's traceparent while `epoch` holds the run."""

        async def note(conn: Conn) -> None:
            await conn.execute(pg_sql.NOTE_TRACE_STRETCH, run_id, epoch, traceparent)

        await self._on_pool(note)

    async def renew_leases(self, owner: str, epochs: Mapping[str, int], lease_seconds: float) -> RenewResult:
        """One statement for all runs, by the database's clock."""

        async def renew(conn: Conn) -> RenewResult:
            rows = await conn.fetch(pg_sql.RENEW, owner, list(epochs), list(epochs.values()), float(lease_seconds))
            held = {r["run_id"]: r["cancel_reason"] for r in rows}
            return RenewResult(frozenset(set(epochs) - set(held)), {k: v for k, v in held.items() if v is not None})

        if not epochs:
            return RenewResult(frozenset(), {})
        return await self._on_pool(renew)

    async def claim_expired(
        self, owner: str, lease_seconds: float, limit: int, *, ignore_leases: bool = False
    ) -> list[Claim]:
        """Take over runs whose lease ran out; each one's last seq is read after the claim committed."""

        async def claim(conn: Conn) -> list[Claim]:
            rows = [
                _row(r) for r in await conn.fetch(pg_sql.claim_sql(ignore_leases), owner, float(lease_seconds), limit)
            ]
            if not rows:
                return []
            last = {r[0]: int(r[1] or 0) for r in await conn.fetch(pg_sql.LAST_SEQS, [r.run_id for r in rows])}
            return [Claim(r, last[r.run_id]) for r in sorted(rows, key=lambda r: (r.created_at, r.run_id))]

        return await self._on_pool(claim)

    async def probe(self) -> None:
        """One durable write through the writer connection, as the event log's batches go."""

        async def touch(conn: Conn) -> None:
            await conn.execute(pg_sql.PROBE)

        await self._on_writer(touch)

    async def release_leases(self, owner: str, epochs: Mapping[str, int]) -> None:
        """Expire the leases still held, now, and notify the other replicas."""

        async def release(conn: Conn) -> None:
            await conn.execute(pg_sql.RELEASE, owner, list(epochs), list(epochs.values()))

        if epochs:
            await self._on_pool(release)

    async def delete_finished_before(self, cutoff: float, *, batch_size: int = DELETE_BATCH) -> int:
        """Retention, `batch_size` runs per transaction (each one statement), until none is left."""
        total = 0
        while True:
            rows = await self._on_pool(lambda conn: conn.fetch(pg_sql.DELETE_FINISHED, cutoff, batch_size))
            total += len(rows)
            if len(rows) < batch_size:
                return total

    # -- reads ----------------------------------------------------------------------------------------------

    async def read_events(self, run_id: str, after_seq: int, limit: int) -> list[bytes]:
        """Events after a seq, in order: a range scan of the primary key."""
        rows = await self._on_pool(
            lambda conn: conn.fetch(
                "SELECT data FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3", run_id, after_seq, limit
            )
        )
        return [bytes(r[0]) for r in rows]

    async def last_seq(self, run_id: str) -> int:
        """The highest seq of a run (one index probe)."""
        value = await self._on_pool(lambda conn: conn.fetchval("SELECT max(seq) FROM events WHERE run_id = $1", run_id))
        return int(value or 0)

    async def _one(self, where: str, *args: object) -> RunRow | None:
        row = await self._on_pool(
            lambda conn: conn.fetchrow(f"SELECT {pg_sql.RUN_COLUMNS} FROM runs WHERE {where}", *args)
        )
        return None if row is None else _row(row)

    async def _many(self, sql: str, *args: object) -> list[RunRow]:
        return [_row(r) for r in await self._on_pool(lambda conn: conn.fetch(sql, *args))]

    async def get_run(self, run_id: str) -> RunRow | None:
        """A run by id."""
        return await self._one("run_id = $1", run_id)

    async def find_run(self, principal: str, client_request_id: str) -> RunRow | None:
        """A run by idempotency key."""
        return await self._one("principal = $1 AND client_request_id = $2", principal, client_request_id)

    async def find_runs_by_prefix(self, principal: str, prefix: str, limit: int) -> list[RunRow]:
        """A range scan of the primary key's index, in whatever collation the database sorts text by."""
        low, high = id_prefix_bounds(prefix)
        if high is None:
            return await self._many(pg_sql.RUNS_FROM_PREFIX, principal, low, limit)
        return await self._many(pg_sql.RUNS_BY_PREFIX, principal, low, high, limit)

    async def count_active(self, principal: str) -> int:
        """The principal's unfinished runs."""
        value = await self._on_pool(
            lambda conn: conn.fetchval(
                f"SELECT count(*) FROM runs WHERE principal = $1 AND {UNFINISHED_SQL}", principal
            )
        )
        return int(value)

    async def list_runs(
        self, principal: str, state: int | None, before: tuple[float, str] | None, limit: int
    ) -> list[RunRow]:
        """A page of runs, newest first (keyset pagination on created_at, run_id)."""
        sql = f"SELECT {pg_sql.RUN_COLUMNS} FROM runs WHERE principal = $1"
        args: list[object] = [principal]
        if state is not None:
            args.append(state)
            sql += f" AND state = ${len(args)}"
        if before is not None:
            args += [before[0], before[1]]
            sql += f" AND (created_at, run_id) < (${len(args) - 1}, ${len(args)})"
        args.append(limit)
        sql += f" ORDER BY created_at DESC, run_id DESC LIMIT ${len(args)}"
        return await self._many(sql, *args)

    async def unfinished_runs(self) -> list[RunRow]:
        """Queued, running or interrupted runs, oldest first."""
        return await self._many(
            f"SELECT {pg_sql.RUN_COLUMNS} FROM runs WHERE {UNFINISHED_SQL} ORDER BY created_at, run_id"
        )

    async def checkpoints(self, run_id: str) -> list[Checkpoint]:
        """Checkpoints by stage."""
        rows = await self._on_pool(
            lambda conn: conn.fetch(
                "SELECT run_id, stage, data FROM checkpoints WHERE run_id = $1 ORDER BY stage", run_id
            )
        )
        return [Checkpoint(r[0], int(r[1]), r[2]) for r in rows]

    async def recent_checkpoints(self, runs: int) -> list[Checkpoint]:
        """The checkpoints of the `runs` most recently finished runs (runs_by_finish picks them)."""
        rows = await self._on_pool(
            lambda conn: conn.fetch(
                "SELECT c.run_id, c.stage, c.data FROM checkpoints c JOIN (SELECT run_id FROM runs "
                "WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT $1) r ON r.run_id = c.run_id",
                runs,
            )
        )
        return [Checkpoint(r[0], int(r[1]), r[2]) for r in rows]

    # -- the response cache ------------------------------------------------------------------------------------

    async def cache_get(self, key: str) -> CacheEntry | None:
        """The response cache entry stored under `key`, if any."""
        sql = f"SELECT {CACHE_COLUMNS} FROM response_cache WHERE key=$1"
        row = await self._on_pool(lambda conn: conn.fetchrow(sql, key))
        return None if row is None else CacheEntry(*row)

    async def cache_put(self, entry: CacheEntry) -> None:
        """Store a response cache entry, replacing the one under its key."""
        values = dataclasses.astuple(entry)[:-1]
        await self._on_pool(lambda conn: conn.execute(pg_sql.CACHE_PUT, *values))

    async def cache_stats(self, principal: str | None = None) -> CacheStats:
        """What the response cache holds: all of it, or one caller's entries."""
        if principal is None:
            row = await self._on_pool(lambda conn: conn.fetchrow(CACHE_STATS))
        else:
            row = await self._on_pool(lambda conn: conn.fetchrow(f"{CACHE_STATS} WHERE principal=$1", principal))
        assert row is not None, "an aggregate has one row"
        # PostgreSQL sums bigints as numeric (Decimal here): plain numbers, as SQLite gives them.
        return CacheStats(int(row[0]), int(row[1]), int(row[2]), int(row[3]), float(row[4]))

    async def cache_clear(self, principal: str | None = None) -> int:
        """Delete the response cache's entries (all, or one caller's)."""
        if principal is None:
            status = await self._on_pool(lambda conn: conn.execute("DELETE FROM response_cache"))
        else:
            status = await self._on_pool(lambda conn: conn.execute(pg_sql.CACHE_CLEAR_PRINCIPAL, principal))
        return int(status.rsplit(" ", 1)[-1])

    async def cache_expire(self, cutoff: float) -> int:
        """Retention: delete response cache entries made before `cutoff`."""
        status = await self._on_pool(lambda conn: conn.execute(pg_sql.CACHE_EXPIRE, cutoff))
        return int(status.rsplit(" ", 1)[-1])
