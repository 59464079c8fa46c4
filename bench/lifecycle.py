"""Goals 3 and 4: memory per idle watcher, time to first event, and replay of a finished 10k-event run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from bench.baseline import Spec
from bench.cluster import Served
from bench.fake import Directive
from bench.lab import Lab
from bench.load import Channels, collaborate_request, follow
from bench.stats import median, percentile, ratio
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc

# Events of a bench run besides the Coder's tokens: run_started, run_completed, and per stage stage_started,
# stage_completed and one artifact or verdict, plus the one token of each other stage.
_OTHER_EVENTS = 2 + 5 * 3 + 4
SETTLE_SECONDS = 1.0


async def _watch_idle(stub: pb_grpc.OrchestratorServiceAsyncStub, run_id: str, attached: asyncio.Event) -> None:
    """Follow a held run: the replay arrives, then only a thinking event every couple of seconds."""
    async for _ in stub.WatchRun(pb.WatchRunRequest(run_id=run_id)):
        attached.set()


async def idle_watchers(lab: Lab, *, watchers: int) -> dict[str, Any]:
    """Server RSS added per watcher of a live run that has nothing to say (its provider holds)."""
    async with lab.server("idle-watchers") as server:
        channels = Channels(server.target, watchers + 1)
        await channels.ready()
        starter = channels.stub().Collaborate(collaborate_request(Directive(hold=-1), cancel_on_disconnect=True))
        first = await anext(aiter(starter))
        run_id = first.event.run_id
        result = await rss_per_watcher(
            server, watchers, lambda attached: _watch_idle(channels.stub(), run_id, attached)  # a channel each
        )
        starter.cancel()
        await channels.close()
    return result


async def rss_per_watcher(
    server: Served, watchers: int, watch: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
) -> dict[str, Any]:
    """Server RSS added per idle watcher that `watch` starts (it sets its event once the replay has arrived)."""
    tasks: list[asyncio.Task[None]] = []

    async def attach(n: int) -> None:
        flags = [asyncio.Event() for _ in range(n)]
        tasks.extend(asyncio.create_task(watch(f)) for f in flags)
        for flag in flags:
            await flag.wait()
        await asyncio.sleep(SETTLE_SECONDS)

    try:
        await attach(min(20, watchers))  # warm up: first-use allocations are not per watcher
        before = server.rss_kib()
        await attach(watchers)
        after = server.rss_kib()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "watchers": watchers,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "kib_per_watcher": (after - before) / watchers,
    }


async def first_event(lab: Lab, *, calls: int) -> dict[str, Any]:
    """Time from the Collaborate call to its first event (run_started, durable), one call at a time."""
    server_ms: list[float] = []
    bare_ms: list[float] = []
    async with lab.server("first-event") as server:
        channels = Channels(server.target, 1)
        bare = Channels(lab.baseline.target, 1)
        await channels.ready()
        await bare.ready()
        for _ in range(calls):
            call = channels.stub().Collaborate(collaborate_request(Directive(hold=-1), cancel_on_disconnect=True))
            got = await follow(call, stamped=False, stop_after=1)
            call.cancel()  # the run is cancelled with it (on_disconnect=CANCEL)
            server_ms.append(got.time_to_first_event * 1e3)
            base = await follow(bare.stub().WatchRun(pb.WatchRunRequest(run_id=Spec(1).encode())), stamped=False)
            bare_ms.append(base.time_to_first_event * 1e3)
        await channels.close()
        await bare.close()
    return {
        "calls": calls,
        "server_p50_ms": percentile(server_ms, 50),
        "server_p99_ms": percentile(server_ms, 99),
        "baseline_p50_ms": percentile(bare_ms, 50),
        "baseline_p99_ms": percentile(bare_ms, 99),
        "ratio_p50": ratio(percentile(server_ms, 50), percentile(bare_ms, 50)),
    }


async def replay(lab: Lab, *, events: int, size: int, repeats: int) -> dict[str, Any]:
    """A finished run of about `events` events, replayed from seq 1 to a client that re-attaches."""
    directive = Directive(tokens={"coder": max(1, events - _OTHER_EVENTS)}, size=size)
    times: dict[str, list[float]] = {"server": [], "server_coalesced": [], "baseline": []}
    async with lab.server("replay") as server:
        channels = Channels(server.target, 1)
        bare = Channels(lab.baseline.target, 1)
        await channels.ready()
        await bare.ready()
        run = await follow(channels.stub().Collaborate(collaborate_request(directive)), stamped=False)
        last_seq = run.last_seq
        for _ in range(repeats):
            for key, coalesce in (("server", False), ("server_coalesced", True)):
                request = pb.WatchRunRequest(run_id=run.run_id, coalesce_tokens=coalesce)
                got = await follow(channels.stub().WatchRun(request), stamped=False)
                assert got.last_seq == last_seq, "the replay ended early"
                times[key].append(got.duration * 1e3)
            base = await follow(
                bare.stub().WatchRun(pb.WatchRunRequest(run_id=Spec(last_seq, size).encode())), stamped=False
            )
            times["baseline"].append(base.duration * 1e3)
        await channels.close()
        await bare.close()
    m = {k: median(v) for k, v in times.items()}
    return {
        "events": last_seq,
        "repeats": repeats,
        "ms": m,
        "samples_ms": times,
        "ratio_server": ratio(m["server"], m["baseline"]),
        "ratio_coalesced": ratio(m["server_coalesced"], m["baseline"]),
    }
