"""How late the event loop runs: a task that asks to wake every interval and measures how late it woke.

Everything a replica does runs on one event loop: streams, health checks, lease renewals. Work that holds it
(a parser that backtracks, a long synchronous call) stops all of them at once, and on PostgreSQL a lease then
lapses and another replica takes the run over. The lag is exported as `facilitair_event_loop_lag_seconds`
and a wake-up later than the threshold is logged as `event_loop_stalled`, so such a stall is seen at once.
It costs one wake-up per interval, nothing per token.
"""

from __future__ import annotations

import asyncio

import structlog

from facilitair.server import metrics
from facilitair.server.tasks import cancel_and_wait, start_task

log = structlog.get_logger(__name__)

# Often enough to see stalls of a few hundred milliseconds; rarely enough to cost nothing.
INTERVAL_SECONDS = 0.1
# A loop that stays slow would log every interval: after a line, the next comes at most this much later and
# counts the stalls in between (the histogram has every one).
STALL_LOG_EVERY = 5.0


class LoopLagMonitor:
    """Measures the running loop's lag until stopped; `start` and `stop` pair up in the server's lifetime."""

    def __init__(self, stall_seconds: float, interval: float = INTERVAL_SECONDS) -> None:
        self.stall_seconds = stall_seconds
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin measuring on the running loop."""
        self._task = start_task(self._measure(), name="event-loop-lag")

    async def stop(self) -> None:
        """Stop measuring and wait for the task to end."""
        await cancel_and_wait(self._task)
        self._task = None

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        stalls, worst, quiet_until = 0, 0.0, 0.0
        while True:
            asked = loop.time()
            await asyncio.sleep(self.interval)
            lag = max(loop.time() - asked - self.interval, 0.0)
            metrics.EVENT_LOOP_LAG.observe(lag)
            if lag < self.stall_seconds:
                continue
            stalls, worst = stalls + 1, max(worst, lag)
            if loop.time() >= quiet_until:
                log.warning(
                    "event_loop_stalled", seconds=round(worst, 3), stalls=stalls, threshold_seconds=self.stall_seconds
                )
                stalls, worst, quiet_until = 0, 0.0, loop.time() + STALL_LOG_EVERY
