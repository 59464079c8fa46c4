"""The load client: starts and follows runs through the generated stubs, timing what it receives.

Raw stubs rather than `facilitair.client.Client`, so that the baseline (which only has WatchRun) and the server
are read by the very same loop; the client library adds one comparison per message on top.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.fake import STAMP_DIGITS, Directive
from facilitair.client import CHANNEL_OPTIONS
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc

# Streams per HTTP/2 connection: the load spreads over several channels, as many clients would.
STREAMS_PER_CHANNEL = 100
# Runs per client connection in the load scenarios (load and replicas alike): 200 runs arrive over 8
# connections, which the kernel spreads over `--workers` processes (2 would all land on one worker half the
# time). The load scenario once used 100 (and before that one shared connection): one of the reasons it
# disagreed with the replica scenario on the same shape (issue 26).
RUNS_PER_CONNECTION = 25


@dataclass
class StageTimes:
    """When a stage's first and last token arrived (time.time_ns()) and how many tokens it carried."""

    first_ns: int
    last_ns: int
    tokens: int = 0
    messages: int = 0


@dataclass
class Followed:
    """What one stream delivered."""

    call_ns: int
    first_event_ns: int = 0
    end_ns: int = 0
    messages: int = 0
    token_messages: int = 0
    tokens: int = 0
    last_seq: int = 0
    run_id: str = ""
    terminal: str = ""
    stages: dict[int, StageTimes] = field(default_factory=dict)
    # Per stamped token message: when it arrived and its relay latency, both in ns.
    received_ns: list[int] = field(default_factory=list)
    latency_ns: list[int] = field(default_factory=list)

    @property
    def time_to_first_event(self) -> float:
        """Seconds from the call to its first message."""
        return (self.first_event_ns - self.call_ns) / 1e9

    @property
    def duration(self) -> float:
        """Seconds from the call to its last message."""
        return (self.end_ns - self.call_ns) / 1e9


async def follow(
    call: AsyncIterable[Any], *, stamped: bool, stop_after: int = 0, on_first: Callable[[str], None] | None = None
) -> Followed:
    """Read a stream to its end (or `stop_after` messages), timing every message; `on_first` gets the run id."""
    out = Followed(call_ns=time.time_ns())
    stages = out.stages
    received, latency = out.received_ns, out.latency_ns
    async for response in call:
        now = time.time_ns()
        event = response.event
        out.messages += 1
        if out.first_event_ns == 0:
            out.first_event_ns = now
            out.run_id = event.run_id
            if on_first is not None:
                on_first(event.run_id)
        payload = event.WhichOneof("payload")
        if payload == "token_delta":
            n = event.seq - event.first_seq + 1 if event.first_seq else 1
            out.tokens += n
            out.token_messages += 1
            stage = stages.get(event.token_delta.stage)
            if stage is None:
                stage = stages[event.token_delta.stage] = StageTimes(now, now)
            stage.last_ns = now
            stage.tokens += n
            stage.messages += 1
            if stamped and n == 1:
                received.append(now)
                latency.append(now - int(event.token_delta.text[:STAMP_DIGITS]))
        elif payload in ("run_completed", "run_failed", "run_cancelled"):
            out.terminal = payload
        out.last_seq = event.seq
        out.end_ns = now
        if stop_after and out.messages >= stop_after:
            break
    return out


# gRPC shares one connection between channels with the same target and options (the global subchannel pool):
# each channel asks for its own, so that the load arrives over several connections as many clients' would, and
# the kernel spreads them over `--workers` processes.
OWN_CONNECTION = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]


class Channels:
    """A few channels to one target, each its own connection, handed out in turn."""

    def __init__(self, target: str, streams: int, per_channel: int = STREAMS_PER_CHANNEL) -> None:
        count = max(1, -(-streams // per_channel))
        self._channels = [grpc.aio.insecure_channel(target, options=OWN_CONNECTION) for _ in range(count)]
        self._stubs = [pb_grpc.OrchestratorServiceStub(c) for c in self._channels]
        self._next = self._cycle()

    def _cycle(self) -> Iterator[pb_grpc.OrchestratorServiceAsyncStub]:
        while True:
            yield from self._stubs

    def stub(self) -> pb_grpc.OrchestratorServiceAsyncStub:
        """The next stub."""
        return next(self._next)

    async def ready(self) -> None:
        """Connect every channel now, so that connecting is not timed."""
        for channel in self._channels:
            await channel.channel_ready()

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels:
            await channel.close(None)


def collaborate_request(directive: Directive, *, coalesce: bool = False, cancel_on_disconnect: bool = False) -> Any:
    """A CollaborateRequest for a bench run (no refinement rounds: the reviewer's text is not a verdict)."""
    return pb.CollaborateRequest(
        task=directive.task(),
        max_refinements=0,
        coalesce_tokens=coalesce,
        on_disconnect=pb.ON_DISCONNECT_CANCEL if cancel_on_disconnect else pb.ON_DISCONNECT_CONTINUE,
    )
