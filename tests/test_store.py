"""The store contract, on both stores: a SQLite file and a real PostgreSQL database (tests/harness/pg.py).

Several store objects on one database stand for several replicas (each PostgresStore has its own connections).
Leases that "ran out" are made with a negative lease time, so no test waits for a clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import replace

import pytest

from facilitair.server.store.base import Batch, Checkpoint, InsertOutcome, RunRow, StoredEvent
from tests.harness.stores import (
    COMPLETED,
    RUNNING,
    Stores,
    batch_of,
    events,
    new_run,
    run_row,
)

pytestmark = pytest.mark.both_stores


async def test_events_read_back_in_order_without_gaps(stores: Stores) -> None:
    store = await stores.new()
    a, b = await new_run(store), await new_run(store)
    assert await store.write_batch(batch_of((a, 1, 3), (b, 1, 2))) == set()
    assert await store.write_batch(batch_of((b, 3, 1), (a, 4, 2))) == set()

    assert await store.read_events(a.run_id, 0, 100) == [e.data for e in events(a.run_id, 1, 5)]
    assert await store.read_events(b.run_id, 0, 100) == [e.data for e in events(b.run_id, 1, 3)]
    assert await store.read_events(a.run_id, 2, 2) == [e.data for e in events(a.run_id, 3, 2)]
    assert await store.read_events(a.run_id, 5, 100) == []
    assert (await store.last_seq(a.run_id), await store.last_seq(b.run_id), await store.last_seq("nope")) == (5, 3, 0)


async def test_a_batch_is_all_or_nothing(stores: Stores) -> None:
    store = await stores.new()
    a, b = await new_run(store), await new_run(store)
    assert await store.write_batch(batch_of((a, 1, 2))) == set()
    bad = Batch(
        [*events(b.run_id, 1, 2), *events(a.run_id, 2, 1)],  # a's seq 2 exists: the whole batch must fail
        [replace(b, state=COMPLETED, finished_at=time.time())],
        [Checkpoint(b.run_id, 1, "stage one")],
        {a.run_id: a.epoch, b.run_id: b.epoch},
    )
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await store.write_batch(bad)

    assert await store.read_events(b.run_id, 0, 10) == []
    assert await store.checkpoints(b.run_id) == []
    row = await store.get_run(b.run_id)
    assert row is not None
    assert row.state == b.state
    assert row.finished_at is None
    assert await store.last_seq(a.run_id) == 2


async def test_the_same_batch_written_again_changes_nothing(stores: Stores) -> None:
    """A retry after a commit whose acknowledgement was lost must not stall the writer on the primary key."""
    replica_a, replica_b = await stores.new(), await stores.new()
    a, b = await new_run(replica_a), await new_run(replica_a)
    taken = await new_run(replica_a, lease=-1.0)
    assert len(await replica_b.claim_expired("B", 60.0, 10)) == 1
    batch = Batch(
        [*events(a.run_id, 1, 3), *events(b.run_id, 1, 2), *events(taken.run_id, 1, 1)],
        [replace(a, state=RUNNING)],
        [Checkpoint(b.run_id, 1, "one")],
        {a.run_id: 1, b.run_id: 1, taken.run_id: 1},
    )
    assert await replica_a.write_batch(batch) == {taken.run_id}
    assert await replica_a.write_batch(batch) == {taken.run_id}
    assert (await replica_a.last_seq(a.run_id), await replica_a.last_seq(b.run_id)) == (3, 2)
    assert await replica_a.read_events(a.run_id, 0, 10) == [e.data for e in events(a.run_id, 1, 3)]
    assert await replica_a.read_events(taken.run_id, 0, 10) == []
    assert [c.data for c in await replica_a.checkpoints(b.run_id)] == ["one"]

    # Not the same batch: a stored seq with other bytes, or old events with new ones, is a conflict.
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await replica_a.write_batch(Batch([StoredEvent(a.run_id, 3, b"other")], [], [], {a.run_id: 1}))
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await replica_a.write_batch(batch_of((a, 3, 2)))
    assert await replica_a.last_seq(a.run_id) == 3


async def test_run_rows_and_checkpoints_commit_with_the_events(stores: Stores) -> None:
    store = await stores.new()
    a = await new_run(store)
    done = replace(a, state=COMPLETED, updated_at=a.updated_at + 5, finished_at=123.5)
    batch = Batch(events(a.run_id, 1, 2), [done], [Checkpoint(a.run_id, 2, "two"), Checkpoint(a.run_id, 1, "one")])
    batch.epochs = {a.run_id: a.epoch}
    assert await store.write_batch(batch) == set()
    again = Batch([], [], [Checkpoint(a.run_id, 2, "two, rewritten")], {a.run_id: a.epoch})
    assert await store.write_batch(again) == set()

    row = await store.get_run(a.run_id)
    assert row is not None
    assert (row.state, row.finished_at, row.summary, row.spec) == (COMPLETED, 123.5, a.summary, a.spec)
    assert (row.owner, row.epoch) == ("A", 1), "a row update never touches the lease"
    assert [(c.stage, c.data) for c in await store.checkpoints(a.run_id)] == [(1, "one"), (2, "two, rewritten")]
    assert await store.unfinished_runs() == []
    assert await store.count_active(a.principal) == 0


async def test_a_stale_epoch_is_refused_while_the_others_commit(stores: Stores) -> None:
    replica_a, replica_b = await stores.new(), await stores.new()
    taken = await new_run(replica_a, lease=-1.0)  # its lease ran out: B takes it over
    kept = await new_run(replica_a)
    claims = await replica_b.claim_expired("B", 60.0, 10)
    assert [(c.row.run_id, c.row.owner, c.row.epoch, c.last_seq) for c in claims] == [(taken.run_id, "B", 2, 0)]

    refused = await replica_a.write_batch(batch_of((taken, 1, 3), (kept, 1, 3)))
    assert refused == {taken.run_id}
    assert await replica_a.read_events(kept.run_id, 0, 10) == [e.data for e in events(kept.run_id, 1, 3)]
    assert await replica_a.read_events(taken.run_id, 0, 10) == []
    # A row update and a checkpoint under the old epoch are refused too; the run's epoch is not in the batch: refused.
    stale = Batch([], [taken], [Checkpoint(taken.run_id, 1, "stale")], {taken.run_id: 1})
    assert await replica_a.write_batch(stale) == {taken.run_id}
    assert await replica_a.write_batch(Batch(events(kept.run_id, 4, 1), [], [], {})) == {kept.run_id}
    assert await replica_a.checkpoints(taken.run_id) == []

    # The new owner goes on from the last seq it was handed.
    assert await replica_b.write_batch(batch_of((claims[0].row, 1, 2))) == set()
    assert await replica_b.read_events(taken.run_id, 0, 10) == [e.data for e in events(taken.run_id, 1, 2)]


@pytest.mark.parametrize("replica_count", [1, 2])
async def test_the_same_request_id_makes_one_run_under_concurrency(stores: Stores, replica_count: int) -> None:
    replicas = [await stores.new() for _ in range(replica_count)] * (3 - replica_count)  # one store twice, or two
    rows = [run_row("alice", "req-1") for _ in range(16)]
    results = await asyncio.gather(
        *(
            replicas[i % 2].insert_run(row, owner=f"R{i % 2}", lease_seconds=60, max_active_per_principal=100)
            for i, row in enumerate(rows)
        )
    )
    created = [r for r in results if r.outcome is InsertOutcome.CREATED]
    assert len(created) == 1
    assert created[0].row is not None
    winner = created[0].row.run_id
    assert {r.row.run_id for r in results if r.row is not None} == {winner}
    assert sum(r.outcome is InsertOutcome.EXISTING for r in results) == 15
    assert [r.run_id for r in await replicas[0].list_runs("alice", None, None, 100)] == [winner]
    # Another principal's request id is its own.
    other = await replicas[1].insert_run(
        run_row("bob", "req-1"), owner="R1", lease_seconds=60, max_active_per_principal=1
    )
    assert other.outcome is InsertOutcome.CREATED


@pytest.mark.parametrize("replica_count", [1, 2])
async def test_the_active_run_limit_holds_under_concurrency(stores: Stores, replica_count: int) -> None:
    replicas = [await stores.new() for _ in range(replica_count)] * (3 - replica_count)  # one store twice, or two
    results = await asyncio.gather(
        *(
            replicas[i % 2].insert_run(
                run_row("alice", f"req-{i}"), owner="R", lease_seconds=60, max_active_per_principal=5
            )
            for i in range(16)
        )
    )
    created = [r.row for r in results if r.outcome is InsertOutcome.CREATED and r.row is not None]
    limited = [r for r in results if r.outcome is InsertOutcome.LIMITED]
    assert (len(created), len(limited)) == (5, 11)
    assert all(r.active == 5 and r.row is None for r in limited)
    assert await replicas[0].count_active("alice") == 5
    assert await replicas[1].count_active("bob") == 0

    # A finished run frees its place.
    first = created[0]
    done = replace(first, state=COMPLETED, finished_at=time.time())
    assert await replicas[0].write_batch(Batch([], [done], [], {first.run_id: first.epoch})) == set()
    again = await replicas[1].insert_run(
        run_row("alice", "req-x"), owner="R", lease_seconds=60, max_active_per_principal=5
    )
    assert again.outcome is InsertOutcome.CREATED
    assert again.active == 4


@pytest.mark.parametrize("replica_count", [1, 2])
async def test_the_rate_of_new_runs_holds_across_replicas(stores: Stores, replica_count: int) -> None:
    replicas = [await stores.new() for _ in range(replica_count)] * (3 - replica_count)  # one store twice, or two
    now = time.time()

    def at(i: int, when: float) -> RunRow:
        return replace(run_row("alice", f"rate-{i}"), created_at=when, updated_at=when)

    # 12 runs asked for at once, at most 4 a minute: 4 are made, 8 refused with the time to wait.
    results = await asyncio.gather(
        *(
            replicas[i % 2].insert_run(
                at(i, now), owner="R", lease_seconds=60, max_active_per_principal=100, max_started_per_minute=4
            )
            for i in range(12)
        )
    )
    outcomes = Counter(r.outcome for r in results)
    assert outcomes == Counter({InsertOutcome.CREATED: 4, InsertOutcome.RATE_LIMITED: 8})
    assert all(r.retry_after == pytest.approx(60.0) for r in results if r.outcome is InsertOutcome.RATE_LIMITED)
    # A minute later the window has room again; another principal was never limited.
    later = await replicas[1].insert_run(
        at(99, now + 61), owner="R", lease_seconds=60, max_active_per_principal=100, max_started_per_minute=4
    )
    assert later.outcome is InsertOutcome.CREATED
    bob = await replicas[0].insert_run(
        run_row("bob", "rate-0"), owner="R", lease_seconds=60, max_active_per_principal=100, max_started_per_minute=4
    )
    assert bob.outcome is InsertOutcome.CREATED


async def test_two_replicas_never_claim_the_same_run(stores: Stores) -> None:
    replica_a, replica_b = await stores.new(), await stores.new()
    expired = [await new_run(replica_a, "dead", lease=-1.0) for _ in range(20)]
    held = await new_run(replica_a, "alive", lease=60.0)
    finished = await new_run(replica_a, "dead", lease=-1.0)
    done = replace(finished, state=COMPLETED, finished_at=time.time())
    assert await replica_a.write_batch(Batch([], [done], [], {done.run_id: 1})) == set()

    rounds = await asyncio.gather(*(r.claim_expired(name, 60.0, 3) for _ in range(6) for r, name in
                                    ((replica_a, "A"), (replica_b, "B"))))  # fmt: skip
    claimed = [c for claims in rounds for c in claims]
    ids = [c.row.run_id for c in claimed]
    assert len(ids) == len(set(ids)), "a run was claimed twice"
    assert set(ids) <= {r.run_id for r in expired}
    leftover = await replica_b.claim_expired("B", 60.0, 100)
    assert set(ids) | {c.row.run_id for c in leftover} == {r.run_id for r in expired}
    assert {c.row.epoch for c in [*claimed, *leftover]} == {2}
    row = await replica_a.get_run(held.run_id)
    assert row is not None
    assert (row.owner, row.epoch) == ("alive", 1)


async def test_renew_reports_lost_runs_and_pending_cancels(stores: Stores) -> None:
    replica_a, replica_b = await stores.new(), await stores.new()
    mine = await new_run(replica_a, "A")
    lapsed = await new_run(replica_a, "A", lease=-1.0)
    (taken,) = await replica_b.claim_expired("B", 60.0, 10)
    assert taken.row.run_id == lapsed.run_id

    assert await replica_b.request_cancel(mine.run_id, "first reason") is True
    assert await replica_b.request_cancel(mine.run_id, "second reason") is True  # idempotent; the first reason stays
    epochs = {mine.run_id: 1, lapsed.run_id: 1, "no-such-run": 1}
    renewed = await replica_a.renew_leases("A", epochs, 30.0)
    assert renewed.lost == {lapsed.run_id, "no-such-run"}
    assert renewed.cancel_requested == {mine.run_id: "first reason"}
    row = await replica_a.get_run(mine.run_id)
    assert row is not None
    assert row.lease_expires_at is not None
    assert row.lease_expires_at > time.time() + 20
    assert row.cancel_reason == "first reason"
    # Someone else's name does not renew A's lease.
    assert (await replica_b.renew_leases("B", {mine.run_id: 1}, 30.0)).lost == {mine.run_id}


async def test_a_cancel_of_a_finished_or_unknown_run_is_ignored(stores: Stores) -> None:
    store = await stores.new()
    run = await new_run(store)
    done = replace(run, state=COMPLETED, finished_at=time.time())
    assert await store.write_batch(Batch([], [done], [], {run.run_id: 1})) == set()
    assert await store.request_cancel(run.run_id, "too late") is False
    assert await store.request_cancel("no-such-run", "who?") is False
    row = await store.get_run(run.run_id)
    assert row is not None
    assert row.cancel_reason is None


async def test_released_leases_are_claimed_at_once(stores: Stores) -> None:
    replica_a, replica_b = await stores.new(), await stores.new()
    run = await new_run(replica_a, "A", lease=3600.0)
    other = await new_run(replica_a, "A", lease=3600.0)
    assert await replica_b.claim_expired("B", 60.0, 10) == []
    await replica_a.release_leases("B", {run.run_id: 1})  # not B's to release: nothing happens
    assert await replica_b.claim_expired("B", 60.0, 10) == []

    await replica_a.release_leases("A", {run.run_id: 1})
    (claim,) = await replica_b.claim_expired("B", 60.0, 10)
    assert (claim.row.run_id, claim.row.owner, claim.row.epoch) == (run.run_id, "B", 2)
    assert await replica_a.write_batch(batch_of((run, 1, 1), (other, 1, 1))) == {run.run_id}


async def test_a_takeover_and_a_batch_serialise(stores: Stores) -> None:
    """Whichever commits first, the taker's last_seq covers every event the old owner got in."""
    replica_a, replica_b = await stores.new(), await stores.new()
    for round_ in range(10):
        run = await new_run(replica_a, "A", lease=3600.0)
        assert await replica_a.write_batch(batch_of((run, 1, 5))) == set()
        await replica_a.release_leases("A", {run.run_id: 1})
        refused, claims = await asyncio.gather(
            replica_a.write_batch(batch_of((run, 6, 50))), replica_b.claim_expired("B", 60.0, 1)
        )
        if not claims:  # the batch held the run's row: the claim skipped it; it is there for the next claim
            claims = await replica_b.claim_expired("B", 60.0, 1)
        (claim,) = claims
        stored = await replica_b.last_seq(run.run_id)
        assert claim.last_seq == stored, f"round {round_}: events landed after the takeover read last_seq"
        assert stored == (5 if refused else 55)
        assert refused in (set(), {run.run_id})
        assert await replica_a.write_batch(batch_of((run, stored + 1, 1))) == {run.run_id}


async def test_retention_deletes_finished_runs_in_batches(stores: Stores) -> None:
    store = await stores.new()
    old = [await new_run(store) for _ in range(7)]
    live = await new_run(store)
    for row in old:
        done = replace(row, state=COMPLETED, finished_at=1000.0)
        batch = Batch(events(row.run_id, 1, 3), [done], [Checkpoint(row.run_id, 1, "x")], {row.run_id: 1})
        assert await store.write_batch(batch) == set()
    recent = await new_run(store)
    done = replace(recent, state=COMPLETED, finished_at=5000.0)
    assert await store.write_batch(Batch(events(recent.run_id, 1, 1), [done], [], {recent.run_id: 1})) == set()
    assert await store.write_batch(batch_of((live, 1, 2))) == set()

    assert await store.delete_finished_before(2000.0, batch_size=3) == 7
    for row in old:
        assert await store.get_run(row.run_id) is None
        assert await store.read_events(row.run_id, 0, 10) == []
        assert await store.checkpoints(row.run_id) == []
    assert await store.last_seq(live.run_id) == 2
    assert await store.last_seq(recent.run_id) == 1
    assert await store.delete_finished_before(2000.0, batch_size=3) == 0


async def test_lists_and_lookups(stores: Stores) -> None:
    store = await stores.new()
    rows = []
    for i in range(5):
        row = run_row("alice", f"r{i}")
        row = replace(row, created_at=100.0 + i)
        result = await store.insert_run(row, owner="A", lease_seconds=60, max_active_per_principal=100)
        assert result.row is not None
        rows.append(result.row)
    await new_run(store, principal="bob")
    newest_first = [r.run_id for r in reversed(rows)]
    assert [r.run_id for r in await store.list_runs("alice", None, None, 3)] == newest_first[:3]
    before = (rows[2].created_at, rows[2].run_id)
    assert [r.run_id for r in await store.list_runs("alice", None, before, 10)] == newest_first[3:]
    done = replace(rows[1], state=RUNNING)
    assert await store.write_batch(Batch([], [done], [], {done.run_id: 1})) == set()
    assert [r.run_id for r in await store.list_runs("alice", RUNNING, None, 10)] == [rows[1].run_id]
    found = await store.find_run("alice", "r3")
    assert found == rows[3]
    assert await store.find_run("bob", "r3") is None
    assert [r.run_id for r in await store.unfinished_runs()][:5] == [r.run_id for r in rows]
    assert await store.get_run(rows[0].run_id) == rows[0]


async def test_listen_is_a_no_op_on_one_process_stores_and_events_need_a_held_run(stores: Stores) -> None:
    store = await stores.new()
    assert (store.kind, store.shared) == (stores.kind, stores.kind == "postgresql")
    # A batch for a run that does not exist is refused (runs are created by insert_run only).
    assert await store.write_batch(Batch([StoredEvent("ghost", 1, b"x")], [], [], {"ghost": 1})) == {"ghost"}
    assert await store.read_events("ghost", 0, 10) == []


async def test_trace_context_is_stored_with_the_run_and_a_stretch_only_under_its_epoch(stores: Stores) -> None:
    replica_a, replica_b = await stores.new(), await stores.new()
    created = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    first, second = created[:-19] + "1111111111111111-01", created[:-19] + "2222222222222222-01"
    row = replace(run_row(), traceparent=created)
    inserted = await replica_a.insert_run(row, owner="A", lease_seconds=-1.0, max_active_per_principal=10)
    assert inserted.row is not None
    assert (inserted.row.traceparent, inserted.row.trace_stretch) == (created, None)
    await replica_a.note_trace_stretch(row.run_id, 1, first)
    [claim] = await replica_b.claim_expired("B", 60.0, 10)  # the next stretch reads both, to link to the last one
    assert (claim.row.traceparent, claim.row.trace_stretch) == (created, first)
    await replica_a.note_trace_stretch(row.run_id, 1, "00-stale")  # epoch 1 no longer holds the run: nothing
    await replica_b.note_trace_stretch(row.run_id, 2, second)
    stored = await replica_a.get_run(row.run_id)
    assert stored is not None
    assert (stored.traceparent, stored.trace_stretch) == (created, second)
