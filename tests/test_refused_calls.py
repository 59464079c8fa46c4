"""A refused call leaves nothing behind in the server (issue 19, item 8).

Many concurrent WatchRun calls on a run that does not exist are refused (NOT_FOUND); once grpc has finished
them, nothing of theirs is left in the server: no handler of ours, no request gate, no error, no watcher, no
live channel of the event log, except the one call grpc's server loop still references (its last). The objects
are counted by type with the garbage collector (content, not timing); the wait for grpc to finish its side of
the calls has a bound that only detects a hang.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections import Counter

import grpc
from prometheus_client import REGISTRY

from facilitair.server.errors import NotFound
from facilitair.server.transport import guard
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.harness.servers import ServerFactory

CALLS = 400
DRAIN_GUARD = 60.0  # hang guard only: grpc finishes a refused call in milliseconds


def held_by_calls() -> Counter[str]:
    """What the server holds per call, counted by kind after a full collection."""
    gc.collect()
    held: Counter[str] = Counter()
    for thing in gc.get_objects():
        if isinstance(thing, NotFound):
            held["NotFound"] += 1
        elif isinstance(thing, guard._Gate):  # the per-call gate: what a leak would hold first
            held["_Gate"] += 1
        elif type(thing).__name__ in ("async_generator", "coroutine"):
            name = getattr(thing, "__qualname__", None) or ""
            if "Servicer." in name:
                held[name] += 1
        elif type(thing).__name__ == "frame" and "facilitair/server" in thing.f_code.co_filename:
            held[f"frame {thing.f_code.co_name}"] += 1
    return held


async def test_refused_watch_calls_leave_nothing_in_the_server(make_server: ServerFactory) -> None:
    h = await make_server()
    watchers = REGISTRY.get_sample_value("facilitair_watchers_active")
    before = held_by_calls()
    missing = str(uuid.uuid4())
    async with grpc.aio.insecure_channel(h.target) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)

        async def refused() -> grpc.StatusCode:
            try:
                async for _ in stub.WatchRun(pb.WatchRunRequest(run_id=missing)):
                    pass
            except grpc.aio.AioRpcError as err:
                return err.code()
            return grpc.StatusCode.OK

        codes = Counter(await asyncio.gather(*(refused() for _ in range(CALLS))))
    assert codes == {grpc.StatusCode.NOT_FOUND: CALLS}

    # The client has every status; grpc may still be finishing its side of the last calls. Nothing signals
    # that, so look again (the bound only detects a hang) until at most one call's state is left: grpc's server
    # loop keeps the exception of the call it handled last (and with it that call's frames) until the next one.
    left = held_by_calls() - before
    async with asyncio.timeout(DRAIN_GUARD):
        while any(n > 1 for n in left.values()):
            await asyncio.sleep(0.2)
            left = held_by_calls() - before
    assert set(left.values()) <= {1}, left  # not a trace of the other CALLS - 1 calls
    assert REGISTRY.get_sample_value("facilitair_watchers_active") == watchers
    assert h.server.runs.events.channel(missing) is None
    assert h.server.runs.active_runs == 0
