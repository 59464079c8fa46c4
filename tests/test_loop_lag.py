"""A stalled event loop is logged and measured at once; the model output that stalled it no longer does (issue 19).

A real server on 127.0.0.1:0 with its /metrics endpoint; the fake OpenAI behind the official SDK.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.events import kind
from tests.harness.logs import captured_logs
from tests.harness.scripts import scripted
from tests.harness.servers import ServerFactory
from tests.test_operations import delta, scrape

BLOCK_SECONDS = 1.0
LAG = "facilitair_event_loop_lag_seconds"


async def test_a_blocked_event_loop_is_logged_and_measured(make_server: ServerFactory) -> None:
    h = await make_server(metrics_listen="127.0.0.1:0", loop_stall_seconds=0.4)
    assert h.server.metrics is not None
    before = await asyncio.to_thread(scrape, h.server.metrics.port)
    with captured_logs() as logs:
        # What a handler that blocks does to the server: the test's loop is the server's.
        asyncio.get_running_loop().call_soon(time.sleep, BLOCK_SECONDS)
        await logs.until("event_loop_stalled")
    after = await asyncio.to_thread(scrape, h.server.metrics.port)

    stalls = logs.of("event_loop_stalled")
    # The monitor asked to wake 0.1 s after a moment before the block began: it woke at least 0.9 s late.
    assert [s["log_level"] for s in stalls] == ["warning"] * len(stalls)
    assert max(s["seconds"] for s in stalls) >= BLOCK_SECONDS - 0.1
    assert {s["threshold_seconds"] for s in stalls} == {0.4}
    over_half_a_second = delta(before, after, f"{LAG}_count") - delta(before, after, f'{LAG}_bucket{{le="0.5"}}')
    assert over_half_a_second >= 1
    assert delta(before, after, f"{LAG}_sum") >= BLOCK_SECONDS - 0.1


async def test_the_monitor_starts_and_stops_with_the_server(make_server: ServerFactory) -> None:
    def monitors() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "event-loop-lag" and not t.done()]

    h = await make_server()
    assert len(monitors()) == 1
    await h.stop()
    assert monitors() == []


@pytest.mark.timeout(120)
async def test_a_comment_banner_in_an_unnamed_code_block_no_longer_stops_the_server(
    make_server: ServerFactory,
) -> None:
    # The Coder's answer that froze the event loop for hours: a banner of 40 dashes, no `File:` line.
    code = f"# {'-' * 40}\n# Reverse a string\n# {'-' * 40}\ndef rev(s: str) -> str:\n    return s[::-1]\n"
    script = scripted(coder=Reply(chunks=["Here is the code:\n```python\n", code, "```\n"]))
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake)
        events = await h.run("reverse a string", max_refinements=0)

    assert kind(events[-1]) == "run_completed", events[-1]
    final = {a.path: (a.kind, a.content) for a in events[-1].run_completed.result.artifacts}
    assert final["solution.py"] == (pb.ARTIFACT_KIND_CODE, code)
