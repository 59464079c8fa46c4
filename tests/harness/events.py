"""Reading runs' events: payload helpers, `RunStream` over the client library, readers of raw gRPC calls.

`RunStream`/`collect` read what `Client.collaborate` or `Client.watch` yields; `read_until`/`read_rest` read
a raw `Collaborate` or `WatchRun` call of the generated stub, for tests that must see the stream exactly as
the server sends it (no reconnect, no resume).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Any, Self

import grpc
import pytest

from facilitair.client import FacilitairError, RunEvent
from facilitair.v1 import orchestrator_pb2 as pb

TERMINAL = frozenset({"run_completed", "run_failed", "run_cancelled"})
# Hang guards only, never synchronisation: a healthy run with the fakes takes well under a second.
EVENT_TIMEOUT = 20.0
RUN_TIMEOUT = 30.0

EventCall = grpc.aio.UnaryStreamCall[Any, Any]


def kind(event: RunEvent) -> str:
    """The name of the payload an event carries ("token_delta", "run_completed", ...)."""
    name = event.WhichOneof("payload")
    assert name is not None, f"event {event.seq} has no payload"
    return name


def payload(event: RunEvent) -> Any:
    """The payload message of an event."""
    return getattr(event, kind(event))


def of_kind(events: Sequence[RunEvent], name: str) -> list[Any]:
    """The payloads of the events of one kind, in order."""
    return [getattr(e, name) for e in events if e.WhichOneof("payload") == name]


def stage_text(events: Sequence[RunEvent], stage: int) -> str:
    """The concatenated token_delta text of one stage (across attempts)."""
    return "".join(e.token_delta.text for e in events if kind(e) == "token_delta" and e.token_delta.stage == stage)


class RunStream:
    """Reads a run's event stream step by step, keeping every event received in `events`.

    `until` stops at the first event that matches (for tests that act mid-run); `to_end` reads on until the
    terminal event. Both fail after `within` seconds, as hang guards only.
    """

    def __init__(self, events: AsyncIterator[RunEvent]) -> None:
        """Wrap an iterator from `Client.collaborate` or `Client.watch`."""
        self._iter = events
        self.events: list[RunEvent] = []
        self.ended = False

    async def _next(self) -> RunEvent | None:
        try:
            event = await anext(self._iter)
        except StopAsyncIteration:
            self.ended = True
            return None
        self.events.append(event)
        if kind(event) in TERMINAL:
            self.ended = True
        return event

    async def until(self, predicate: Callable[[RunEvent], bool], *, within: float = EVENT_TIMEOUT) -> RunEvent:
        """Read until an event matches `predicate` and return it; fail if the stream ends first."""
        async with asyncio.timeout(within):
            while not self.ended:
                event = await self._next()
                if event is not None and predicate(event):
                    return event
        raise AssertionError(f"stream ended without a matching event; got {[kind(e) for e in self.events]}")

    async def to_end(self, *, within: float = RUN_TIMEOUT) -> list[RunEvent]:
        """Read until the stream ends and return every event received."""
        async with asyncio.timeout(within):
            while not self.ended:
                await self._next()
        return self.events

    async def aclose(self) -> None:
        """Close the underlying stream (cancels its RPC)."""
        close = getattr(self._iter, "aclose", None)
        if close is not None:
            await close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def collect(events: AsyncIterator[RunEvent], *, within: float = RUN_TIMEOUT) -> list[RunEvent]:
    """Every event of a stream until it ends (the run's terminal event), in the order received."""
    async with RunStream(events) as stream:
        return await stream.to_end(within=within)


async def refusal(events: AsyncIterable[RunEvent]) -> FacilitairError:
    """The FacilitairError a client stream fails with; fails the test if it yields any event."""
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            async for event in events:
                raise AssertionError(f"the call was not refused: got {kind(event)}")
    except FacilitairError as err:
        return err
    raise AssertionError("the stream ended without an error")


# ----- raw calls -------------------------------------------------------------------------------------------------


async def read_until(call: EventCall, done: Callable[[list[pb.RunEvent]], bool]) -> list[pb.RunEvent]:
    """Read events until `done(events)` holds; the stream must not end first."""
    events: list[pb.RunEvent] = []
    while not done(events):
        response = await call.read()
        if not isinstance(response, pb.CollaborateResponse | pb.WatchRunResponse):
            pytest.fail(f"the stream ended after {len(events)} events: {[kind(e) for e in events]}")
        events.append(response.event)
    return events


async def read_rest(call: EventCall) -> list[pb.RunEvent]:
    """Read events until the stream ends, and check that it ended OK."""
    events: list[pb.RunEvent] = []
    while True:
        response = await call.read()
        if not isinstance(response, pb.CollaborateResponse | pb.WatchRunResponse):
            break
        events.append(response.event)
    assert await call.code() == grpc.StatusCode.OK
    return events


def wire(events: Sequence[pb.RunEvent]) -> list[bytes]:
    """The events as bytes, to compare payloads exactly."""
    return [e.SerializeToString(deterministic=True) for e in events]


def covered(events: Sequence[pb.RunEvent]) -> list[int]:
    """The seqs the events stand for: a coalesced token_delta stands for first_seq..seq."""
    return [s for e in events for s in range((e.first_seq or e.seq), e.seq + 1)]


def assert_complete_log(events: Sequence[pb.RunEvent], last: str = "run_completed") -> None:
    """Seqs 1..N with no gap or duplicate, one run, one terminal event, at the end."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len({e.run_id for e in events}) == 1
    assert kind(events[0]) == "run_started"
    assert kind(events[-1]) == last
    terminal = [e for e in events if kind(e) in TERMINAL]
    assert len(terminal) == 1
