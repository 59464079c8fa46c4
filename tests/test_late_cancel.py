"""A stop asked for as a run ends does not cut off the ending the run has already reached.

Once the pipeline has returned, the run's task still awaits (its silence watchdog stopping, the event log's
flush) before it records its terminal event. A CancelRun (or a server stop) in that moment must not leave the run
without a terminal event (`running` in the store with nobody driving it). The lifecycle no longer cancels a
run whose ending is decided (`RunLifecycle.decided`); `tasks.cancel_and_wait` lets a caller's own cancellation
through, so it no longer hides one; this test holds that window shut whatever changes there. The cancel is
asked for at exactly that point, from inside the watchdog's stop, so the order does not depend on timing.
"""

from __future__ import annotations

import asyncio

import pytest

from facilitair.server.events.watchdog import SilenceWatchdog
from facilitair.v1 import orchestrator_pb2 as pb
from tests.harness.events import RUN_TIMEOUT, TERMINAL, kind
from tests.harness.servers import serving
from tests.harness.stores import Target

pytestmark = pytest.mark.both_stores


async def test_a_cancel_asked_as_the_run_ends_leaves_its_one_terminal_event(
    store_target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(store_target) as env:
        lifecycle = env.server.runs.lifecycle
        original = SilenceWatchdog.stop
        asked: list[str] = []

        async def stop_with_a_cancel_in_between(self: SilenceWatchdog) -> None:
            task = asyncio.current_task()
            name = task.get_name() if task is not None else ""
            if name.startswith("run-") and not asked:  # the run's first stop: its pipeline has just ended
                run_id = name.removeprefix("run-")
                asked.append(run_id)
                lifecycle.cancel(run_id, "cancelled as the run ended")
            await original(self)

        monkeypatch.setattr(SilenceWatchdog, "stop", stop_with_a_cancel_in_between)
        async with asyncio.timeout(RUN_TIMEOUT):  # a hang guard only
            events = await env.run_to_end()
        run_id = events[0].run_id
        assert asked == [run_id]
        assert [kind(e) for e in events if kind(e) in TERMINAL] == ["run_completed"]
        assert kind(events[-1]) == "run_completed"
        assert (await env.get_run(run_id)).state == pb.RUN_STATE_COMPLETED
        stored = await env.watch_all(run_id)
        assert [e.seq for e in stored] == [e.seq for e in events]
        assert not lifecycle.is_live(run_id)
