"""The webhook outbox in the store contract, on both stores: rows commit with their terminal events or not at all,
once however often a batch is written, and two replicas claiming at once never take the same row.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from facilitair.server.store.base import AttemptResult, Batch, WebhookDelivery
from tests.harness.stores import COMPLETED, Stores, events, new_run

pytestmark = pytest.mark.both_stores


def delivery(run_id: str, n: int = 0) -> WebhookDelivery:
    """One outbox row of a run."""
    return WebhookDelivery(
        f"msg_{run_id[:8]}{n}", run_id, "run.completed", f"https://h{n}.example/x", b"{}", time.time()
    )


async def test_deliveries_commit_with_the_terminal_event_once_and_never_for_a_refused_run(stores: Stores) -> None:
    store = await stores.new()
    a, b = await new_run(store), await new_run(store)
    done = time.time()
    batch = Batch(
        [*events(a.run_id, 1, 1), *events(b.run_id, 1, 1)],
        [replace(a, state=COMPLETED, finished_at=done), replace(b, state=COMPLETED, finished_at=done)],
        [],
        {a.run_id: a.epoch, b.run_id: b.epoch + 1},  # b is held under another epoch now: refused
        [delivery(a.run_id, 0), delivery(a.run_id, 1), delivery(b.run_id)],
    )
    assert await store.write_batch(batch) == {b.run_id}
    assert await store.write_batch(batch) == {b.run_id}  # written again (a lost acknowledgement): nothing twice
    stored = await store.webhooks.recent(10)
    assert sorted((r.id, r.run_id, r.state, r.attempts) for r in stored) == [
        (delivery(a.run_id, 0).id, a.run_id, "pending", 0),
        (delivery(a.run_id, 1).id, a.run_id, "pending", 0),
    ]
    assert await store.webhooks.recent(10, b.run_id) == []
    # A batch that fails as a whole leaves no delivery behind either.
    c = await new_run(store)
    clash = Batch([*events(c.run_id, 1, 1), *events(a.run_id, 1, 1)], [], [], {a.run_id: a.epoch, c.run_id: c.epoch},
                  [delivery(c.run_id)])  # fmt: skip
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await store.write_batch(clash)
    assert await store.webhooks.recent(10, c.run_id) == []
    # Retention removes a run's deliveries with it.
    assert await store.delete_finished_before(time.time() + 1) == 1
    assert await store.webhooks.recent(10) == []


async def test_two_replicas_claiming_at_once_never_take_the_same_delivery(stores: Stores) -> None:
    one, two = await stores.new(), await stores.new()
    runs = [await new_run(one) for _ in range(20)]
    for r in runs:
        batch = Batch(
            list(events(r.run_id, 1, 1)), [], [], {r.run_id: r.epoch}, [delivery(r.run_id, n) for n in range(3)]
        )
        assert await one.write_batch(batch) == set()
    claims = await asyncio.gather(*(s.webhooks.claim(f"{name}/{k}", 60, 7) for k in range(5) for name, s in
                                    (("one", one), ("two", two))))  # fmt: skip
    ids = [row.id for claim in claims for row in claim]
    assert len(ids) == 60
    assert len(set(ids)) == 60
    # Claimed rows are not claimed again while the lease lasts.
    assert await two.webhooks.claim("late", 60, 100) == []
    first = claims[0][0]
    assert await one.webhooks.record(first.id, "someone-else", AttemptResult("delivered", 1, 0.0, 200, None)) is False
    assert await one.webhooks.record(first.id, "one/0", AttemptResult("pending", 1, 0.0, 500, "HTTP 500")) is True
    [again] = await two.webhooks.claim("retry", 60, 100)
    assert (again.id, again.attempts, again.last_status, again.owner) == (first.id, 1, 500, "retry")
    # Sent again from the first attempt (redeliver): the claim is dropped, so its holder can no longer record.
    assert await one.webhooks.redeliver(first.run_id) == 3
    assert await one.webhooks.record(first.id, "retry", AttemptResult("delivered", 2, 0.0, 200, None)) is False
    # A claim whose lease ran out (a replica that died mid-attempt) is taken over; its old owner cannot record.
    stale = await one.webhooks.claim("stale", -1, 100)
    assert len(stale) == 3
    taken = await two.webhooks.claim("fresh", 60, 100)
    assert sorted(r.id for r in taken) == sorted(r.id for r in stale)
    assert {r.attempts for r in taken} == {0}
    assert await one.webhooks.record(stale[0].id, "stale", AttemptResult("delivered", 1, 0.0, 200, None)) is False
