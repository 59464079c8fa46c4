"""Background tasks the server's parts start and stop (loops, timers, watchdogs, work handed off by a call).

One behaviour everywhere: a task is referenced until it ends, an unexpected error is logged once when it
happens (`background_task_failed`), and stopping cancels the task and waits until it has ended. A part with one
long-lived task of its own starts it with `start_task`, keeps it in an attribute and ends it with
`cancel_and_wait`. Work started now and then (a cancel a notification asked for, a health update, a feed being
stopped, a run being created) belongs to a `TaskSupervisor`, one per owning part.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


def start_task(work: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Start a long-lived task (its owner keeps it and ends it with cancel_and_wait); an error is logged once."""
    task = asyncio.get_running_loop().create_task(work, name=name)
    task.add_done_callback(_report)
    return task


def _report(task: asyncio.Task[Any], owner: str | None = None) -> None:
    """Log a task's unexpected error, once: retrieved here, asyncio does not report it again at collection."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background_task_failed", owner=owner or task.get_name(), task=task.get_name(), exc_info=exc)


async def cancel_and_wait(task: asyncio.Task[object] | asyncio.Task[None] | None) -> None:
    """Cancel a task (None or already done: nothing to do) and wait until it has ended."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        # The task's own end is expected; a cancel of the caller while it waited is the caller's, and goes on.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


class TaskSupervisor:
    """Owns background tasks: keeps each one referenced until it ends, logs an unexpected error once, and on
    close cancels those still running and waits for them all.

    asyncio keeps only a weak reference to a task, so one nobody holds may vanish mid-way; its exception would
    otherwise be reported only when it is garbage collected ("never retrieved"), if at all.
    """

    def __init__(self, owner: str) -> None:
        self._owner = owner  # named in the log when one of its tasks fails
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiting: dict[asyncio.Task[Any], int] = {}  # awaited tasks still running: how many callers join them
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[Any, Any, T], *, name: str | None = None, awaited: bool = False) -> asyncio.Task[T]:
        """Run `work` as a task of this owner; `awaited`: a caller waits for it with `join` and handles its errors,
        so they are logged here only when no caller is left to receive them. After close() the task is cancelled
        before it runs: nothing outlives its owner."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        if awaited:
            self._waiting[task] = 0
        task.add_done_callback(self._ended)
        if self._closed:
            task.cancel()
        return task

    async def join(self, task: asyncio.Task[T]) -> T:
        """Wait for an awaited task; a caller that leaves meanwhile does not stop it (the work belongs to the
        owner), and if it then fails with no caller left waiting, its error is logged instead of lost."""
        self._waiting[task] = self._waiting.get(task, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            if task in self._waiting:
                self._waiting[task] -= 1

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # Runs before any joiner resumes (it was added first): a joiner still counted receives the error itself.
        if self._waiting.pop(task, 0) == 0:
            _report(task, self._owner)

    async def close(self) -> None:
        """Cancel the tasks still running and wait until every one has ended (their errors are logged as ever)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
