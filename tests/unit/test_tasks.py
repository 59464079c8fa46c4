"""The task supervisor (tasks.py): background work is kept alive, its failures are logged once, close ends it all."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
import structlog

from facilitair.server.tasks import TaskSupervisor, cancel_and_wait, start_task


@pytest.fixture
async def unhandled() -> list[dict[str, Any]]:
    """What the event loop's exception handler is given (a task's exception never retrieved, for one)."""
    seen: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: seen.append(context))
    return seen


async def test_a_crashing_task_is_logged_once_and_not_lost(unhandled: list[dict[str, Any]]) -> None:
    tasks = TaskSupervisor("owner-a")

    async def crash() -> None:
        raise RuntimeError("boom")

    with structlog.testing.capture_logs() as logs:
        task = tasks.spawn(crash(), name="crasher")
        await asyncio.wait([task])
        del task
        gc.collect()  # a task whose exception nobody retrieved is reported here, when it is collected
    failures = [e for e in logs if e["event"] == "background_task_failed"]
    assert len(failures) == 1
    assert (failures[0]["owner"], failures[0]["task"], failures[0]["log_level"]) == ("owner-a", "crasher", "error")
    assert isinstance(failures[0]["exc_info"], RuntimeError)
    assert str(failures[0]["exc_info"]) == "boom"
    assert unhandled == []  # retrieved by the supervisor: asyncio does not report it a second time
    assert len(tasks) == 0


async def test_a_task_nobody_else_references_runs_to_its_end() -> None:
    tasks = TaskSupervisor("owner")
    go, done = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        await go.wait()
        done.set()

    tasks.spawn(work())  # the result is dropped at once: only the supervisor holds the task
    gc.collect()
    assert len(tasks) == 1
    go.set()
    await done.wait()
    await tasks.close()
    assert len(tasks) == 0


async def test_close_cancels_every_task_and_waits_for_their_cleanup() -> None:
    tasks = TaskSupervisor("owner")
    started: list[int] = []
    cleaned: list[int] = []
    all_started = asyncio.Event()

    async def forever(n: int) -> None:
        started.append(n)
        if len(started) == 3:
            all_started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits: close must wait for it too
            cleaned.append(n)

    spawned = [tasks.spawn(forever(n)) for n in range(3)]
    await all_started.wait()
    with structlog.testing.capture_logs() as logs:
        await tasks.close()
    assert sorted(cleaned) == [0, 1, 2]
    assert all(t.cancelled() for t in spawned)
    assert len(tasks) == 0
    assert [e for e in logs if e["log_level"] == "error"] == []  # a cancel is no failure


async def test_work_offered_after_close_never_runs() -> None:
    tasks = TaskSupervisor("owner")
    await tasks.close()
    ran: list[bool] = []

    async def work() -> None:
        ran.append(True)

    task = tasks.spawn(work())
    await asyncio.wait([task])
    assert task.cancelled()
    assert ran == []


async def test_an_awaited_task_leaves_its_errors_to_the_caller() -> None:
    tasks = TaskSupervisor("owner")

    async def refuse() -> str:
        raise ValueError("limited")

    with structlog.testing.capture_logs() as logs, pytest.raises(ValueError, match="limited"):
        await tasks.join(tasks.spawn(refuse(), awaited=True))
    assert [e for e in logs if e["event"] == "background_task_failed"] == []
    assert len(tasks) == 0


async def test_an_awaited_task_whose_caller_left_has_its_error_logged_once(unhandled: list[dict[str, Any]]) -> None:
    tasks = TaskSupervisor("owner-b")
    joined, fail = asyncio.Event(), asyncio.Event()

    async def create() -> str:
        await fail.wait()
        raise RuntimeError("store refused")

    async def caller(task: asyncio.Task[str]) -> str:
        joined.set()
        return await tasks.join(task)

    with structlog.testing.capture_logs() as logs:
        task = tasks.spawn(create(), name="create-x", awaited=True)
        leaving = asyncio.create_task(caller(task))
        await joined.wait()
        leaving.cancel()  # the client left while its run was being created
        await asyncio.wait([leaving])
        assert not task.done()  # the caller leaving does not stop the work
        fail.set()
        await asyncio.wait([task])
        del task
        gc.collect()
    failures = [e for e in logs if e["event"] == "background_task_failed"]
    assert [(e["owner"], e["task"], str(e["exc_info"])) for e in failures] == [("owner-b", "create-x", "store refused")]
    assert unhandled == []
    assert len(tasks) == 0


async def test_a_long_lived_task_that_crashes_is_logged_when_it_happens(unhandled: list[dict[str, Any]]) -> None:
    async def loop() -> None:
        raise KeyError("lost")

    with structlog.testing.capture_logs() as logs:
        task = start_task(loop(), name="writer")
        await asyncio.wait([task])  # not stopped yet: the error is logged now, not at its owner's stop
        failures = [e for e in logs if e["event"] == "background_task_failed"]
        assert [(e["owner"], e["task"]) for e in failures] == [("writer", "writer")]
        await cancel_and_wait(task)  # the owner's stop, later: nothing more is said
        del task
        gc.collect()
    assert len([e for e in logs if e["event"] == "background_task_failed"]) == 1
    assert unhandled == []


async def test_cancel_and_wait_waits_for_the_cleanup_of_a_long_lived_task() -> None:
    began, cleaned = asyncio.Event(), []

    async def loop() -> None:
        began.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)
            cleaned.append(True)

    task = start_task(loop(), name="loop")
    await began.wait()
    await cancel_and_wait(task)
    assert task.cancelled()
    assert cleaned == [True]


async def test_cancel_and_wait_lets_its_callers_own_cancellation_through() -> None:
    began, ending = asyncio.Event(), asyncio.Event()

    async def slow_to_end() -> None:
        began.set()
        try:
            await asyncio.Event().wait()
        finally:
            ending.set()  # cancelled by cancel_and_wait, which now waits for this cleanup
            await asyncio.Event().wait()

    task = start_task(slow_to_end(), name="slow")
    await began.wait()
    stopping = asyncio.create_task(cancel_and_wait(task))
    await ending.wait()
    stopping.cancel()  # the caller is cancelled while it waits: that cancellation is its own, not swallowed
    await asyncio.wait([stopping])
    assert stopping.cancelled()
    assert task.cancelled()
