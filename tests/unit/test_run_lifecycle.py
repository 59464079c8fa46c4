"""The run lifecycle (issue 20, item 9): the one place that says who drives a run here and why it stops.

Runs are real asyncio tasks that wait until they are cancelled, as a run's task waits on its provider; the
store's health is the real StoreHealth the event log reports to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from facilitair.server.domain import RunOutcome
from facilitair.server.errors import Reason
from facilitair.server.events.health import StoreHealth
from facilitair.server.runs.lifecycle import Cancel, Completed, Interrupt, Lost, Phase, RunLifecycle
from tests.harness.logs import HANG_GUARD, captured_logs


async def _until_cancelled() -> None:
    await asyncio.Event().wait()


class Runs:
    """A lifecycle and the tasks it was given, each standing for a run's task."""

    def __init__(self, health: StoreHealth, grace: float) -> None:
        self.health = health
        self.lifecycle = RunLifecycle(health, grace_seconds=grace)
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def drive(self, run_id: str, epoch: int = 1) -> asyncio.Task[None]:
        task = asyncio.create_task(_until_cancelled(), name=run_id)
        self.tasks[run_id] = task
        self.lifecycle.own(run_id, epoch, task)
        return task

    async def until_ended(self, run_id: str) -> None:
        async with asyncio.timeout(HANG_GUARD):
            await asyncio.wait({self.tasks[run_id]})


@pytest.fixture
async def runs() -> AsyncIterator[Runs]:
    made = Runs(StoreHealth(), grace=3600.0)
    yield made
    await made.lifecycle.stop()
    for task in made.tasks.values():
        task.cancel()


async def test_the_first_stop_asked_wins_and_the_task_is_cancelled_once(runs: Runs) -> None:
    task = runs.drive("r1")
    assert runs.lifecycle.phase("r1") is Phase.OWNED
    runs.lifecycle.cancel("r1", "a client asked")
    runs.lifecycle.cancel("r1", "asked again")
    await runs.lifecycle.interrupt_all(wait=None)
    assert task.cancelled()
    assert runs.lifecycle.why("r1") == Cancel("a client asked")
    assert runs.lifecycle.phase("r1") is Phase.STOPPING


async def test_a_run_lost_after_it_was_stopped_is_said_lost_once_and_ends_as_first_asked(runs: Runs) -> None:
    runs.drive("r1", epoch=3)
    await runs.lifecycle.interrupt_all(wait=0)
    with captured_logs() as logs:
        runs.lifecycle.lose({"r1"})
        runs.lifecycle.lose({"r1", "not-here"})  # the refused write and the lease renewal both tell
    await runs.until_ended("r1")
    assert [e["run_id"] for e in logs.of("run_lost")] == ["r1"]
    assert runs.lifecycle.why("r1") == Interrupt()
    assert runs.lifecycle.phase("r1") is Phase.LOST
    runs.lifecycle.ended("r1", Interrupt())
    # Another replica holds it: its lease is not this replica's to give back.
    assert runs.lifecycle.phase("r1") is None
    assert runs.lifecycle.take_handed_over() == {}


async def test_an_interrupted_run_is_handed_over_once_stored_and_its_lease_given_back(runs: Runs) -> None:
    runs.drive("r1", epoch=2)
    runs.drive("r2", epoch=5)
    assert runs.lifecycle.held() == {"r1": 2, "r2": 5}
    await runs.lifecycle.interrupt_all(wait=None)
    assert not runs.lifecycle.lease_work.is_set()
    runs.lifecycle.ended("r1", Interrupt())
    runs.lifecycle.ended("r2", None)  # stopped while its end waited for the store: its lease is kept meanwhile
    assert runs.lifecycle.lease_work.is_set(), "the lease keeper is woken to give the lease back now"
    assert runs.lifecycle.phase("r1") is Phase.HANDED_OVER
    assert runs.lifecycle.phase("r2") is None
    assert runs.lifecycle.held() == {}
    taken = runs.lifecycle.take_handed_over()
    assert taken == {"r1": 2}
    assert runs.lifecycle.take_handed_over() == {}
    runs.lifecycle.give_back_failed(taken)  # the store could not: kept for the next try
    assert runs.lifecycle.handing_over == 1
    runs.drive("r1", epoch=3)  # claimed back meanwhile: driven here again, nothing to give back
    assert runs.lifecycle.phase("r1") is Phase.OWNED
    assert runs.lifecycle.take_handed_over() == {}


async def test_a_finished_run_leaves_nothing_behind(runs: Runs) -> None:
    runs.drive("r1")
    runs.lifecycle.ended("r1", Completed(RunOutcome([], approved=True, refinements=0)))
    assert runs.lifecycle.phase("r1") is None
    assert not runs.lifecycle.lease_work.is_set()
    assert await runs.lifecycle.cancel_and_wait("r1", "too late", wait=HANG_GUARD)


async def test_losing_and_waiting_stops_a_run_without_a_log_line(runs: Runs) -> None:
    task = runs.drive("r1")
    with captured_logs() as logs:
        await runs.lifecycle.lose_and_wait("r1")
    assert task.cancelled()
    assert runs.lifecycle.why("r1") == Lost()
    assert logs.of("run_lost") == []


async def test_a_store_outage_longer_than_the_grace_interrupts_every_run_with_its_cause() -> None:
    runs = Runs(StoreHealth(), grace=0.0)
    runs.drive("r1")
    runs.drive("r2")
    with captured_logs() as logs:
        runs.health.failed("disk full")
        await runs.until_ended("r1")
        await runs.until_ended("r2")
    await runs.lifecycle.stop()
    stops = [runs.lifecycle.why(r) for r in ("r1", "r2")]
    assert all(isinstance(s, Interrupt) and s.error is not None for s in stops)
    errors = [s.error for s in stops if isinstance(s, Interrupt) and s.error is not None]
    assert [e.reason for e in errors] == [Reason.STORE_UNAVAILABLE] * 2
    assert all("disk full" in e.public_message for e in errors)
    assert [(e["runs"], e["cause"]) for e in logs.of("runs_interrupted")] == [(2, "disk full")]


async def test_a_store_back_within_the_grace_interrupts_nothing(runs: Runs) -> None:
    task = runs.drive("r1")
    runs.health.failed("disk full")
    runs.health.succeeded()
    await runs.lifecycle.stop()
    assert not task.done()
    assert runs.lifecycle.phase("r1") is Phase.OWNED
