"""The stores' side of approval gates, on both stores: a waiting run is claimable only once it has something to
do, its gate's first decision wins among racing replicas, and it still counts against its caller's limit."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from facilitair.server.domain import AgentRole, ApprovalDecision, Decision, RunState
from facilitair.server.store.base import Batch, DecideOutcome, EventStore, RunRow, WebhookDelivery
from tests.harness.stores import Stores, events, new_run

pytestmark = pytest.mark.both_stores


async def waiting(store: EventStore, *, expires_in: float = 3600.0) -> RunRow:
    """A run held by "A" that stops at a gate: its row says so (as its batch writes it), its lease given back."""
    row = await new_run(store)
    gated = dataclasses.replace(
        row, state=int(RunState.AWAITING_APPROVAL), approval_id=f"gate-{row.run_id}",
        approval_due_at=time.time() + expires_in,
    )  # fmt: skip
    assert await store.write_batch(Batch([], [gated], [], {row.run_id: row.epoch})) == set()
    await store.release_leases("A", {row.run_id: row.epoch})
    return gated


def decision(row: RunRow, choice: ApprovalDecision, principal: str) -> Decision:
    assert row.approval_id is not None
    return Decision(row.approval_id, 1, AgentRole.ARCHITECT, choice, principal, decided_at=time.time())


async def test_a_waiting_run_is_claimed_only_once_decided_and_the_first_decision_wins(stores: Stores) -> None:
    replicas = [await stores.new() for _ in range(4)]
    row = await waiting(replicas[0])
    assert await replicas[1].count_active("alice") == 1  # it still counts against its caller's limit
    assert await replicas[1].claim_expired("B", 60.0, 10) == []  # nothing to do: nobody claims it
    choices = [ApprovalDecision.APPROVE, ApprovalDecision.REJECT, ApprovalDecision.REVISE, ApprovalDecision.APPROVE]
    results = await asyncio.gather(
        *(
            s.decide(row.run_id, decision(row, c, f"p{i}"))
            for i, (s, c) in enumerate(zip(replicas, choices, strict=True))
        )
    )
    outcomes = [r.outcome for r in results]
    assert outcomes.count(DecideOutcome.RECORDED) == 1
    assert outcomes.count(DecideOutcome.EXISTING) == 3
    recorded = [r.recorded for r in results]
    assert recorded == [recorded[0]] * 4  # every racer is told the one recorded decision
    assert await replicas[2].decisions(row.run_id) == [results[0].recorded]
    claims = await replicas[3].claim_expired("D", 60.0, 10)
    assert [c.row.run_id for c in claims] == [row.run_id]
    assert claims[0].row.owner == "D"


async def test_a_decision_for_a_gate_the_run_does_not_wait_at_is_not_recorded(stores: Stores) -> None:
    store = await stores.new()
    row = await waiting(store)
    running = await new_run(store)
    wrong = dataclasses.replace(decision(row, ApprovalDecision.APPROVE, "alice"), approval_id="gate-other")
    assert (await store.decide(row.run_id, wrong)).outcome is DecideOutcome.NOT_PENDING
    # A gate of one run named with another run: not that run's, so nothing of the first is told.
    assert (await store.decide(running.run_id, decision(row, ApprovalDecision.APPROVE, "bob"))).recorded is None
    assert await store.decisions(row.run_id) == []


async def test_an_expired_gate_or_a_cancel_makes_a_waiting_run_claimable(stores: Stores) -> None:
    store = await stores.new()
    expired = await waiting(store, expires_in=-1.0)
    cancelled = await waiting(store)
    quiet = await waiting(store)
    assert await store.request_cancel(cancelled.run_id, "cancelled by a client request")
    claims = await store.claim_expired("B", 60.0, 10)
    assert sorted(c.row.run_id for c in claims) == sorted([expired.run_id, cancelled.run_id])
    assert quiet.run_id not in {c.row.run_id for c in claims}
    assert await store.count_active("alice") == 3


async def test_retention_removes_a_finished_runs_decisions_and_webhook_rows_with_it(stores: Stores) -> None:
    store = await stores.new()
    row = await waiting(store, expires_in=-1.0)
    assert (await store.decide(row.run_id, decision(row, ApprovalDecision.APPROVE, "alice"))).outcome is (
        DecideOutcome.RECORDED
    )
    [claim] = await store.claim_expired("A", 60.0, 10)
    done = dataclasses.replace(
        claim.row, state=int(RunState.COMPLETED), finished_at=1000.0, approval_id=None, approval_due_at=None
    )
    told = WebhookDelivery(f"msg-{row.run_id}", row.run_id, "run.completed", "https://h.example/x", b"{}", 1000.0)
    batch = Batch(events(row.run_id, 1, 1), [done], [], {row.run_id: claim.row.epoch}, [told])
    assert await store.write_batch(batch) == set()
    assert len(await store.decisions(row.run_id)) == 1
    assert [d.id for d in await store.webhooks.recent(10, row.run_id)] == [told.id]
    assert await store.delete_finished_before(2000.0) == 1
    assert await store.decisions(row.run_id) == []
    assert await store.webhooks.recent(10, row.run_id) == []
