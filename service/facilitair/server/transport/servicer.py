"""The OrchestratorService servicer: convert the request, call the run service, convert back.

Errors are not mapped here: whatever a handler raises, during setup or mid-stream, reaches the guard
(transport/guard.py), which sends it through the one status table (transport/status.py) for every method of
every service. `_stream` carries both streaming RPCs: metrics, and the policy for a client that leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from facilitair.server import metrics
from facilitair.server.events import wire
from facilitair.server.events.channel import Committed
from facilitair.server.events.relay import coalesce_tokens
from facilitair.server.events.wire import TERMINAL_PAYLOADS
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.runs.service import RunService
from facilitair.server.settings import Settings
from facilitair.server.tasks import TaskSupervisor
from facilitair.server.transport import requests
from facilitair.server.transport.guard import current_principal
from facilitair.server.transport.tracing import current_traceparent
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)

Context = grpc.aio.ServicerContext[object, object]
R = TypeVar("R")
EventBatches = AsyncIterator[Committed]


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):
    """Thin adapter from gRPC to the RunService."""

    def __init__(
        self,
        runs: RunService,
        settings: Settings,
        config: PipelineConfig,
        info: pb.GetServerInfoResponse,
        tasks: TaskSupervisor,
    ) -> None:
        self._runs = runs
        self._settings = settings
        self._config = config
        self._info = info  # built once at start: nothing in it changes while the server runs
        self._tasks = tasks  # the server's: work a call hands off outlives the call, not the server

    # -- streams --------------------------------------------------------------------------------

    async def _stream(
        self,
        rpc: str,
        open_events: Callable[[], Awaitable[EventBatches]],
        message: Callable[[pb.RunEvent], R],
        *,
        coalesce: bool,
        on_client_gone: Callable[[], None] | None = None,
    ) -> AsyncGenerator[Any, None]:  # R or bytes (the response serialised): typed Any for the stubs' signatures
        sent = metrics.MESSAGES_SENT.labels(rpc)
        metrics.WATCHERS_ACTIVE.inc()
        complete = False
        event: pb.RunEvent | None = None  # the last one yielded
        try:
            async for batch in await open_events():
                if coalesce:
                    events = coalesce_tokens(batch)
                    for event in events:
                        yield message(event)
                    sent.inc(len(events))
                    continue
                # Each event's response as bytes, made once as it committed and shared by every watcher of the
                # run: the same for both RPCs, and sent as they are (the guard's serialiser passes bytes on).
                for event, frame in zip(batch, batch.frames, strict=True):  # noqa: B007 - `event`: the last one sent
                    yield frame
                sent.inc(len(batch))
            complete = True
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away (cancelled, deadline, connection lost), or the server is stopping. grpc tells
            # it in two ways: a CancelledError at an await of ours, or, when the client left while grpc was
            # writing the message yielded last (grpc awaits that write outside this generator), a GeneratorExit
            # at that yield once grpc closes the generator. Both end here, so the policy applies either way.
            if on_client_gone is not None and not self._runs.stopping and not _is_terminal(event):
                on_client_gone()
            raise
        finally:
            metrics.WATCHERS_ACTIVE.dec()
            log.info("stream_closed", complete=complete)

    # -- the RPCs -----------------------------------------------------------------------------

    async def Collaborate(
        self, request: pb.CollaborateRequest, context: Context
    ) -> AsyncIterator[pb.CollaborateResponse]:
        """Start (or re-attach to) a run and stream its events."""
        structlog.contextvars.bind_contextvars(rpc="Collaborate")
        principal = current_principal()
        traceparent = current_traceparent()
        creation: list[asyncio.Future[str]] = []  # the run's creation, once it has begun
        cancel_on_disconnect = request.on_disconnect == pb.ON_DISCONNECT_CANCEL

        async def open_events() -> EventBatches:
            spec = requests.run_spec(request, self._settings, self._config)
            # A task of its own that this call only waits for: a client that leaves while its run is being
            # created does not stop the creation (the run service completes it regardless), and the CANCEL
            # policy then applies to the run it created, once it has one. Supervised, so a failure after the
            # client left is logged rather than lost.
            creating = self._tasks.spawn(
                self._runs.create_run(spec, principal, traceparent=traceparent), name="create-run", awaited=True
            )
            creation.append(creating)
            run_id = await self._tasks.join(creating)
            structlog.contextvars.bind_contextvars(run_id=run_id)
            return await self._runs.watch(run_id, 0, principal)

        def client_gone() -> None:
            if cancel_on_disconnect and creation:
                creation[0].add_done_callback(lambda created: self._cancel_created(created, principal))

        # aclosing: when grpc closes this generator (its client left while a message was written), the helper's
        # generator is closed at once too, not whenever it is garbage collected, so the policy applies now.
        stream = self._stream(
            "Collaborate",
            open_events,
            wire.collaborate_response,
            coalesce=request.coalesce_tokens,
            on_client_gone=client_gone,
        )
        async with contextlib.aclosing(stream):
            async for response in stream:
                yield response

    def _cancel_created(self, creation: asyncio.Future[str], principal: str) -> None:
        """Cancel the run a creation made, in the background; a creation that failed made none."""
        if creation.cancelled() or creation.exception() is not None or self._runs.stopping:
            return  # no run, or the server is stopping: its runs are handed over, not cancelled
        run_id = creation.result()
        log.info("run_cancel_on_disconnect", run_id=run_id)

        async def cancel() -> None:
            try:
                await self._runs.cancel_run(run_id, principal, reason="the client disconnected (on_disconnect=CANCEL)")
            except Exception:
                log.exception("cancel_on_disconnect_failed", run_id=run_id)

        self._tasks.spawn(cancel(), name=f"cancel-on-disconnect-{run_id}")

    async def WatchRun(self, request: pb.WatchRunRequest, context: Context) -> AsyncIterator[pb.WatchRunResponse]:
        """Replay and follow a run."""
        structlog.contextvars.bind_contextvars(rpc="WatchRun", run_id=request.run_id[:64])

        async def open_events() -> EventBatches:
            run_id = requests.run_id_of(request.run_id)
            return await self._runs.watch(run_id, request.after_seq, current_principal())

        stream = self._stream(
            "WatchRun", open_events, wire.watch_response, coalesce=request.coalesce_tokens
        )
        async with contextlib.aclosing(stream):  # closed with this generator, as in Collaborate
            async for response in stream:
                yield response

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        """Describe a run."""
        structlog.contextvars.bind_contextvars(rpc="GetRun", run_id=request.run_id[:64])
        run = await self._runs.get_run(requests.run_id_of(request.run_id), current_principal())
        return wire.get_run_response(run)

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        """A page of the caller's runs."""
        structlog.contextvars.bind_contextvars(rpc="ListRuns")
        state = requests.run_state_of(request.state)
        runs, token = await self._runs.list_runs(current_principal(), state, request.page_size, request.page_token)
        return wire.list_runs_response(runs, token)

    async def CancelRun(self, request: pb.CancelRunRequest, context: Context) -> pb.CancelRunResponse:
        """Cancel a run (idempotent)."""
        structlog.contextvars.bind_contextvars(rpc="CancelRun", run_id=request.run_id[:64])
        run = await self._runs.cancel_run(requests.run_id_of(request.run_id), current_principal())
        return wire.cancel_run_response(run)

    async def SubmitApproval(self, request: pb.SubmitApprovalRequest, context: Context) -> pb.SubmitApprovalResponse:
        """Decide a run's approval gate (the first decision wins; the same request again gets the same answer)."""
        structlog.contextvars.bind_contextvars(rpc="SubmitApproval", run_id=request.run_id[:64])
        decision, run = await self._runs.submit_approval(requests.approval_request(request), current_principal())
        return wire.submit_approval_response(decision, run)

    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: Context) -> pb.GetServerInfoResponse:
        """What this server offers: version, providers, models, limits, store, replica."""
        structlog.contextvars.bind_contextvars(rpc="GetServerInfo")
        return self._info


def _is_terminal(event: pb.RunEvent | None) -> bool:
    """Whether a run's stream ended with this event: a client leaving after it leaves nothing to cancel."""
    return event is not None and event.WhichOneof("payload") in TERMINAL_PAYLOADS
