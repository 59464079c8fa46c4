"""What a database a network hop away costs (issue 26): round trips of a start, and leases apart from run traffic.

The round trips are counted by the bench's delay proxy (bench/delay_proxy.py, with no delay) between a real
PostgreSQL store and the real database: a round trip is a send of the client that follows an answer. PostgreSQL
only: the SQLite store has no network between it and its file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import asyncpg
import pytest

from bench.delay_proxy import DelayProxy, delayed
from facilitair.server.store.base import Batch, InsertOutcome, InsertResult, RunRow, StoredEvent
from facilitair.server.store.postgres import PostgresStore
from tests.harness.stores import HANG_GUARD, batch_of, new_run, run_row

T = TypeVar("T")
# Lock waits in this test's own database (other tests' databases share the server).
WAITING_HERE = (
    "SELECT count(*) FROM pg_locks WHERE NOT granted AND database = (SELECT oid FROM pg_database "
    "WHERE datname = current_database())"
)
LIMIT = 3  # the principal's most runs in flight, in the first test


@pytest.fixture
async def proxied(pg_url: str) -> AsyncIterator[tuple[PostgresStore, DelayProxy]]:
    """A store whose every connection goes through a proxy that counts round trips."""
    async with delayed(pg_url, 0) as (url, proxy):
        store = PostgresStore(url, readers=1)  # one pooled connection: its statements are prepared once
        await store.open()
        try:
            yield store, proxy
        finally:
            await store.close()


async def _trips(proxy: DelayProxy, call: Awaitable[T]) -> tuple[int, T]:
    """The round trips `call` made, and what it returned."""
    before = proxy.turns
    result = await call
    return proxy.turns - before, result


async def test_a_start_is_one_round_trip_to_store_it_and_one_to_commit(
    proxied: tuple[PostgresStore, DelayProxy],
) -> None:
    store, proxy = proxied
    await new_run(store)  # prepares the start's statement on the pooled connection, as any start after the first
    first, second, third = (run_row("alice", f"key-{i}") for i in range(3))

    def start(row: RunRow) -> Awaitable[InsertResult]:
        return store.insert_run(row, owner="A", lease_seconds=60, max_active_per_principal=LIMIT)

    # Created, created, the same key again (its run), then refused by the limit: one round trip each.
    trips, created = await _trips(proxy, start(first))
    assert (trips, created.outcome) == (1, InsertOutcome.CREATED)
    assert created.row is not None
    assert (created.row.owner, created.row.epoch) == ("A", 1)
    assert (await _trips(proxy, start(second)))[0] == 1
    trips, again = await _trips(proxy, start(first))
    assert (trips, again.outcome, again.row) == (1, InsertOutcome.EXISTING, created.row)
    trips, limited = await _trips(proxy, start(third))
    assert (trips, limited.outcome, limited.active) == (1, InsertOutcome.LIMITED, LIMIT)
    # The run's first commit is one more: a start costs two round trips in all.
    await store.write_batch(batch_of((created.row, 1, 1)))  # prepares the writer's statement
    started = Batch([StoredEvent(created.row.run_id, 2, b"run_started")], [], [], {created.row.run_id: 1})
    assert (await _trips(proxy, store.write_batch(started)))[0] == 1
    assert await store.read_events(created.row.run_id, 0, 10) == [f"{created.row.run_id}#1".encode(), b"run_started"]


async def test_a_renewal_completes_while_every_pooled_connection_waits(pg_url: str) -> None:
    """Reads that fill the pool (each blocked on a lock another session holds) do not hold a renewal up."""
    store = PostgresStore(pg_url, readers=2)
    await store.open()
    blocker = await asyncpg.connect(pg_url)
    try:
        row = await new_run(store, lease=60)
        await store.write_batch(batch_of((row, 1, 2)))
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        reads = [asyncio.create_task(store.read_events(row.run_id, 0, 10)) for _ in range(3)]
        async with asyncio.timeout(HANG_GUARD):
            # Both pooled connections wait in the database: read pg_locks until both show (hang guard only).
            while await blocker.fetchval(WAITING_HERE) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            renewed = await store.renew_leases("A", {row.run_id: row.epoch}, 60)
        assert (renewed.lost, renewed.cancel_requested) == (frozenset(), {})
        assert not any(r.done() for r in reads)  # the pool was still full when the renewal completed
        await tx.rollback()
        async with asyncio.timeout(HANG_GUARD):
            got = await asyncio.gather(*reads)
        assert got == [[f"{row.run_id}#1".encode(), f"{row.run_id}#2".encode()]] * 3
    finally:
        await blocker.close()
        await store.close()
