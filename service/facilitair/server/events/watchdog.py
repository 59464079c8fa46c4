"""The silence watchdog: a client of a live run is never left without a message for long.

`thinking` goes out every `thinking_interval` while a model was asked and has not answered; otherwise a
`heartbeat` goes out after `heartbeat_interval` without any event. Application data keeps proxies and load
balancers from cutting an idle stream, which HTTP/2 pings alone do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from facilitair.server.tasks import cancel_and_wait, start_task


class SilenceWatchdog:
    """Calls `thinking(stage, waited)` or `heartbeat()` when a run has been quiet for too long."""

    def __init__(
        self,
        *,
        thinking_interval: float,
        heartbeat_interval: float,
        thinking: Callable[[int, float], None],
        heartbeat: Callable[[], None],
        name: str,
    ) -> None:
        self._thinking_interval = thinking_interval
        self._heartbeat_interval = heartbeat_interval
        self._thinking = thinking
        self._heartbeat = heartbeat
        self._name = name
        self.last_event = time.monotonic()
        self.waiting_stage = 0
        self._waiting_since = 0.0
        self._next_thinking = 0.0
        self._rearm = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def waiting(self, stage: int) -> None:
        """The model of `stage` was asked: thinking events until its first token."""
        now = time.monotonic()
        self.waiting_stage = stage
        self._waiting_since = now
        self._next_thinking = now + self._thinking_interval
        self._rearm.set()

    def answered(self) -> None:
        """The model answered (or failed): no more thinking events."""
        if self.waiting_stage:
            self.waiting_stage = 0
            # The watchdog sleeps until the next thinking event; a heartbeat may now be due sooner.
            self._rearm.set()

    def start(self) -> None:
        """Start watching."""
        self.last_event = time.monotonic()
        self._task = start_task(self._watch(), name=f"watchdog-{self._name}")

    async def stop(self) -> None:
        """Stop watching (always, in a finally); safe to call twice."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _watch(self) -> None:
        # A timer, not synchronisation: sleep until the next moment silence would begin, then look.
        while True:
            now = time.monotonic()
            if self.waiting_stage:
                due = self._next_thinking
                if now >= due:
                    self._thinking(self.waiting_stage, round(now - self._waiting_since, 3))
                    self._next_thinking = now + self._thinking_interval
                    continue
            else:
                due = self.last_event + self._heartbeat_interval
                if now >= due:
                    self._heartbeat()
                    continue
            self._rearm.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that arrives in the same
            # loop iteration as the event is set, and stop() would then wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(due - now):
                    await self._rearm.wait()
