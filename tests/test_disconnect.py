"""on_disconnect=CANCEL at the two moments a client can leave without the handler seeing CancelledError.

grpc.aio tells a streaming handler that its client left in one of two ways: a CancelledError at the handler's
own `await`, or, when the client leaves while grpc is writing the message the handler just yielded, a
GeneratorExit at that `yield` (grpc's send is awaited outside the handler's generator). And while the run is
being created the handler waits on a shielded creation that completes whatever the caller does. Each moment is
made deterministic here, not hit by repetition:
- while a message is being written: the fake streams far more than one HTTP/2 stream window of tokens, the
  client reads one and never widens its window (no BDP probing), and a second reader sees every token stored
  before the client cancels, so the handler has nothing left to wait for but the write;
- while the run is being created: the store's insert is held at a gate until the server has seen the stream
  end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from facilitair.server.store.base import InsertResult, RunRow
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.events import RunStream, kind, read_until
from tests.harness.logs import captured_logs, on_log
from tests.harness.scripts import default_replies, held, scripted
from tests.harness.servers import ServerFactory

TASK = "Write a function that reverses a string"
HANG_GUARD = 20.0
# 64 chunks of 16 KiB: 1 MiB of tokens against the 64 KiB stream window of a client that never widens it.
FLOOD = ["x" * 16_384] * 64
# The client's window stays at its initial 64 KiB: without BDP probing grpc does not grow it by itself.
FIXED_WINDOW = [("grpc.http2.bdp_probe", 0)]
DISCONNECT_REASON = "the client disconnected (on_disconnect=CANCEL)"


def tokens(events: list[pb.RunEvent]) -> int:
    """How many token_delta events there are."""
    return sum(1 for e in events if kind(e) == "token_delta")


def assert_cancelled_once(events: list[pb.RunEvent]) -> None:
    """Ends with run_cancelled for the client's disconnect, and no other terminal event."""
    kinds = [kind(e) for e in events]
    assert kinds[-1] == "run_cancelled", kinds[-5:]
    assert [k for k in kinds if k in ("run_completed", "run_failed", "run_cancelled")] == ["run_cancelled"]
    assert events[-1].run_cancelled.reason == DISCONNECT_REASON
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_a_client_leaving_while_a_message_is_written_cancels_the_run(make_server: ServerFactory) -> None:
    flood, _release = held(Reply(chunks=FLOOD), after=len(FLOOD))  # every chunk sent, then the stream holds
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(scripted(architect=flood)) as fake:
        h = await make_server(openai=fake)
        with captured_logs() as logs:
            async with grpc.aio.insecure_channel(h.target, options=FIXED_WINDOW) as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                call = stub.Collaborate(pb.CollaborateRequest(task=TASK, on_disconnect=pb.ON_DISCONNECT_CANCEL))
                head = await read_until(call, lambda evs: tokens(evs) == 1)  # then it stops reading
                run_id = head[0].run_id
                async with RunStream(h.client.watch(run_id)) as watcher:
                    # The whole flood is stored: the handler can only be blocked writing into the full window.
                    await watcher.until(lambda e: tokens(watcher.events) == len(FLOOD))
                    call.cancel()
                    closed = await logs.until("stream_closed", rpc="Collaborate")
                    assert closed["complete"] is False
                    # Decided before the stream is closed (not found out later): the run is to be cancelled.
                    assert [e["run_id"] for e in logs.of("run_cancel_on_disconnect")] == [run_id]
                    events = await watcher.to_end(within=HANG_GUARD)
        assert_cancelled_once(events)
        await asyncio.wait_for(fake.wait_disconnect(), 5.0)  # its provider stream was closed
        assert len(fake.requests) == 1  # and nothing more was asked
        assert len(logs.of("run_cancel_on_disconnect")) == 1  # once, though the stream closed at two levels
        assert (await h.client.get_run(run_id)).state == pb.RUN_STATE_CANCELLED


async def test_a_client_leaving_while_its_run_is_created_cancels_the_run(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    architect, _release = held(default_replies()["architect"], after=1)  # the run cannot end by itself
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(scripted(architect=architect)) as fake:
        h = await make_server(openai=fake)
        store = h.server.runs.store
        insert_run: Callable[..., Awaitable[InsertResult]] = store.insert_run
        entered, gate, stored = asyncio.Event(), asyncio.Event(), asyncio.Event()
        created: list[str] = []

        async def held_insert(row: RunRow, **limits: Any) -> InsertResult:
            created.append(row.run_id)
            entered.set()
            await gate.wait()
            try:
                return await insert_run(row, **limits)
            finally:
                stored.set()

        monkeypatch.setattr(store, "insert_run", held_insert)
        with captured_logs() as logs:
            async with grpc.aio.insecure_channel(h.target) as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                with on_log("stream_closed", complete=False) as closed:
                    call = stub.Collaborate(pb.CollaborateRequest(task=TASK, on_disconnect=pb.ON_DISCONNECT_CANCEL))
                    await entered.wait()
                    call.cancel()
                    await closed.wait()  # the server saw the client leave before the run was stored
            assert logs.of("run_cancel_on_disconnect") == []  # nothing to cancel yet: no run is stored
            gate.set()
            await stored.wait()
            events = await RunStream(h.client.watch(created[0])).to_end(within=HANG_GUARD)
        assert created == [events[0].run_id]
        assert_cancelled_once(events)
        assert len(fake.requests) <= 1  # the architect was asked at most once ...
        if fake.requests:
            await asyncio.wait_for(fake.wait_disconnect(), 5.0)  # ... and its stream closed
        assert [e["run_id"] for e in logs.of("run_cancel_on_disconnect")] == created
        assert (await h.client.get_run(created[0])).state == pb.RUN_STATE_CANCELLED
