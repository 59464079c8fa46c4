"""The OrchestratorService servicer: convert the request, delegate to the RunManager, convert back.

Errors go through `_abort`, one place that maps them to a status (with a BadRequest detail for
invalid fields); anything unexpected becomes INTERNAL with a generic message, never a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from facilitair.server import convert, metrics
from facilitair.server.errors import FacilitairError, InvalidArgument, ResourceLimited, status_of
from facilitair.server.guard import PRINCIPAL
from facilitair.server.relay import coalesce_tokens
from facilitair.server.runs import RunManager
from facilitair.server.settings import PipelineConfig, Settings
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)


def principal_of(context: grpc.aio.ServicerContext[object, object]) -> str:
    """Who is calling (set by the guard interceptor); every run belongs to one principal."""
    return PRINCIPAL.get()


async def _abort(context: grpc.aio.ServicerContext[object, object], exc: BaseException) -> NoReturn:
    """End the call with the status that fits `exc`."""
    code, message = status_of(exc)
    if not isinstance(exc, FacilitairError):
        log.error("rpc_failed", exc_info=exc)
    status = status_pb2.Status(code=code.value[0], message=message)
    if isinstance(exc, ResourceLimited):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(exc.retry_after * 1e9))
        detail = any_pb2.Any()
        detail.Pack(retry)
        status.details.append(detail)
    if isinstance(exc, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in exc.violations
                ]
            )
        )
        status.details.append(detail)
    await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]
    raise AssertionError("abort_with_status returns only by raising")  # pragma: no cover


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):
    """Thin adapter from gRPC to the RunManager."""

    def __init__(self, runs: RunManager, settings: Settings, config: PipelineConfig) -> None:
        self._runs = runs
        self._settings = settings
        self._config = config
        self._background: set[asyncio.Task[None]] = set()

    async def Collaborate(
        self, request: pb.CollaborateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.CollaborateResponse]:
        """Start (or re-attach to) a run and stream its events."""
        structlog.contextvars.bind_contextvars(rpc="Collaborate")
        principal = principal_of(context)
        try:
            spec = convert.run_spec(request, self._settings, self._config)
            run_id = await self._runs.create_run(spec, principal)
            structlog.contextvars.bind_contextvars(run_id=run_id)
            events = await self._runs.watch(run_id, 0, principal)
        except Exception as exc:
            await _abort(context, exc)
        ended = False
        coalesce = request.coalesce_tokens
        sent = metrics.MESSAGES_SENT.labels("Collaborate")
        metrics.WATCHERS_ACTIVE.inc()
        try:
            async for batch in events:
                messages = coalesce_tokens(batch) if coalesce else batch
                for event in messages:
                    yield pb.CollaborateResponse(event=event)
                sent.inc(len(messages))
            ended = True
        except asyncio.CancelledError:
            # The client went away (cancelled, deadline, connection lost): the run follows on_disconnect.
            # A stream ended by the server's own shutdown is not a client going away: the run is
            # interrupted and resumes at the next start, whatever on_disconnect says.
            if spec.on_disconnect == pb.ON_DISCONNECT_CANCEL and not self._runs.stopping:
                task = asyncio.get_running_loop().create_task(self._cancel_detached(run_id, principal))
                self._background.add(task)  # keep a reference until it is done
                task.add_done_callback(self._background.discard)
            raise
        finally:
            metrics.WATCHERS_ACTIVE.dec()
            log.info("stream_closed", complete=ended)

    async def _cancel_detached(self, run_id: str, principal: str) -> None:
        try:
            await self._runs.cancel_run(run_id, principal, reason="the client disconnected (on_disconnect=CANCEL)")
        except Exception:
            log.exception("cancel_on_disconnect_failed", run_id=run_id)

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.WatchRunResponse]:
        """Replay and follow a run."""
        structlog.contextvars.bind_contextvars(rpc="WatchRun", run_id=request.run_id[:64])
        try:
            events = await self._runs.watch(convert.run_id_of(request.run_id), request.after_seq, principal_of(context))
        except Exception as exc:
            await _abort(context, exc)
        coalesce = request.coalesce_tokens
        sent = metrics.MESSAGES_SENT.labels("WatchRun")
        metrics.WATCHERS_ACTIVE.inc()
        try:
            async for batch in events:
                messages = coalesce_tokens(batch) if coalesce else batch
                for event in messages:
                    yield pb.WatchRunResponse(event=event)
                sent.inc(len(messages))
        finally:
            metrics.WATCHERS_ACTIVE.dec()

    async def GetRun(
        self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.GetRunResponse:
        """Describe a run."""
        structlog.contextvars.bind_contextvars(rpc="GetRun", run_id=request.run_id[:64])
        try:
            run = await self._runs.get_run(convert.run_id_of(request.run_id), principal_of(context))
        except Exception as exc:
            await _abort(context, exc)
        return pb.GetRunResponse(run=run)

    async def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListRunsResponse:
        """A page of the caller's runs."""
        structlog.contextvars.bind_contextvars(rpc="ListRuns")
        try:
            if request.state not in pb.RunState.values():
                raise InvalidArgument("state", f"unknown value {request.state}")
            runs, token = await self._runs.list_runs(
                principal_of(context), request.state, request.page_size, request.page_token
            )
        except Exception as exc:
            await _abort(context, exc)
        return pb.ListRunsResponse(runs=runs, next_page_token=token)

    async def CancelRun(
        self, request: pb.CancelRunRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.CancelRunResponse:
        """Cancel a run (idempotent)."""
        structlog.contextvars.bind_contextvars(rpc="CancelRun", run_id=request.run_id[:64])
        try:
            run = await self._runs.cancel_run(convert.run_id_of(request.run_id), principal_of(context))
        except Exception as exc:
            await _abort(context, exc)
        return pb.CancelRunResponse(run=run)
