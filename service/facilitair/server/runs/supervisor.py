"""The supervisor: drives every run that lives in this process, from spawn to its one ending.

A run's task belongs to the supervisor, not to the stream that started it, so it outlives every connection.
Its time here ends in exactly one way, decided in `_ending`: completed, failed, or stopped for the reason the
run's lifecycle (lifecycle.py) gives: cancelled (a CancelRun or a client that left with on_disconnect=CANCEL),
interrupted (the server is stopping, or the store cannot write: no terminal event; the run's lease is handed
over and it resumes here or on another replica), or lost (another replica took the run over: nothing more is
written, the provider's stream is closed). The supervisor records that ending and tells the lifecycle.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from facilitair.server import metrics
from facilitair.server.domain import CacheMode, Decision, Gate
from facilitair.server.errors import FacilitairError, RunDeadlineExceeded
from facilitair.server.events import wire
from facilitair.server.events.recorder import RunRecorder
from facilitair.server.pipeline.attempts import AttemptPolicy, StageRunner
from facilitair.server.pipeline.budget import Budget
from facilitair.server.pipeline.cache import ResponseCache
from facilitair.server.pipeline.gates import AwaitingApproval, Rejected
from facilitair.server.pipeline.orchestrator import Pipeline
from facilitair.server.pipeline.plan_history import StageHistory
from facilitair.server.pipeline.spec import RunSpec, StageOutput
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.pricing import PriceTable
from facilitair.server.providers import ProviderRegistry
from facilitair.server.runs.admission import Admission
from facilitair.server.runs.lifecycle import (
    Cancel,
    Completed,
    Ending,
    Failed,
    Interrupt,
    Lost,
    RunLifecycle,
    Waiting,
)
from facilitair.server.sandbox import Sandbox
from facilitair.server.settings import Settings
from facilitair.server.store.base import EventStore
from facilitair.server.telemetry import StretchTrace, Telemetry

log = structlog.get_logger(__name__)

#: Maps an error to the gRPC status number a run_failed event carries (the transport's one status table).
StatusNumber = Callable[[BaseException], int]
#: The traceparents stored with a run: of the call that created it, and of the last stretch a replica drove it.
StoredTrace = tuple[str | None, str | None]
# How long storing a stretch's traceparent may take; past it the next stretch is not linked, the run goes on.
TRACE_NOTE_SECONDS = 5.0


class Supervisor:
    """Spawns and drives the runs of this process; their lifecycle says who stops them and why."""

    def __init__(
        self,
        settings: Settings,
        *,
        lifecycle: RunLifecycle,
        admission: Admission,
        providers: ProviderRegistry,
        prices: PriceTable,
        config: PipelineConfig,
        status_number: StatusNumber,
        history: StageHistory | None = None,
        sandbox: Sandbox | None = None,
        telemetry: Telemetry | None = None,
        store: EventStore | None = None,
    ) -> None:
        self._settings = settings
        self._telemetry = telemetry or Telemetry()
        # The run store: where the response cache lives and a stretch's traceparent is noted; None: neither.
        self._store = store
        self._lifecycle = lifecycle
        self._admission = admission
        self._sandbox = sandbox
        self._history = history
        self._providers = providers
        self._prices = prices
        self._config = config
        self._status_number = status_number

    def spawn(
        self,
        rec: RunRecorder,
        spec: RunSpec,
        principal: str,
        checkpoints: dict[int, StageOutput] | None = None,
        interrupted_stage: int = 0,
        *,
        decisions: dict[int, Decision] | None = None,
        pending: Gate | None = None,
        trace: StoredTrace = (None, None),
    ) -> None:
        """Start driving a run: from its start, or from its checkpoints (and its gates' decisions) after a restart."""
        # The run's timeout does not count the time it waited for people at its gates.
        waited = sum(max(d.decided_at - d.requested_at, 0.0) for d in (decisions or {}).values())
        deadline = self._deadline(rec) + waited
        stretch = self._telemetry.stretch(rec.run_id, created=trace[0], previous=trace[1])
        policy = AttemptPolicy(
            attempts_per_model=self._settings.provider_attempts,
            retry_wait_max=self._settings.retry_wait_max,
            provider_timeout=self._settings.provider_timeout,
            backoff_base=self._settings.retry_backoff,
        )
        budget = Budget(spec.budget_usd, spec.budget_tokens, self._prices)
        cache = None
        if self._store is not None and spec.cache is not CacheMode.OFF:
            cache = ResponseCache(self._store, spec.cache, principal=principal, run_id=rec.run_id, prices=self._prices)
        runner = StageRunner(rec, self._providers, policy, budget, deadline, cache=cache, trace=stretch)
        pipeline = Pipeline(
            spec,
            rec,
            self._prices,
            self._config,
            runner=runner,
            checkpoints=checkpoints,
            interrupted_stage=interrupted_stage,
            history=self._history,
            decisions=decisions,
            pending=pending,
            sandbox=self._sandbox,
        )
        # A fresh context: the run outlives the RPC that started it and must not log as that RPC.
        task = asyncio.create_task(
            self._drive(rec, pipeline, deadline, stretch), name=f"run-{rec.run_id}", context=contextvars.Context()
        )
        self._lifecycle.own(rec.run_id, rec.channel.epoch, task)
        metrics.RUNS_ACTIVE.inc()

    def _deadline(self, rec: RunRecorder) -> float:
        """The run's deadline on the monotonic clock, counted from its creation across restarts."""
        return time.monotonic() + rec.created_at + self._settings.run_timeout - time.time()

    async def _drive(self, rec: RunRecorder, pipeline: Pipeline, deadline: float, stretch: StretchTrace) -> None:
        """Run the pipeline and record the run's one ending."""
        structlog.contextvars.bind_contextvars(run_id=rec.run_id)
        started = time.monotonic()
        rec.watchdog.start()
        stored: Ending | None = None
        ending: Ending | None = None
        try:
            ending = await self._ending(rec.run_id, pipeline, deadline, self._note_stretch(rec, stretch))
            self._lifecycle.decided(rec.run_id)  # no cancel from here on: the awaits below lead to its terminal event
            await rec.watchdog.stop()
            if isinstance(ending, Lost):
                # Not ours to write any more: the new owner resumes the run from what is stored.
                rec.event_log.close_channel(rec.channel)
                return
            if isinstance(ending, Interrupt):
                # Watchers are told now; the row's state waits for the store like every other write.
                rec.event_log.close_channel(rec.channel, error=ending.error)
            self._record(rec, ending)
            await rec.event_log.flush()
            stored = ending
            if isinstance(ending, Waiting):
                # Its gate is stored: watchers follow the run from the store now, wherever it goes on.
                rec.event_log.close_channel(rec.channel)
                log.info("run_waiting", approval_id=ending.gate.approval_id, stage=ending.gate.stage)
                return
            u = rec.usage
            log.info(
                "run_finished",
                state=wire.state_name(rec.state),
                seconds=round(time.monotonic() - started, 3),
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                cost_usd=round(u.cost_usd, 6),
                usage_estimated=u.estimated,
                last_seq=rec.last_seq,
            )
        finally:
            stretch.end(*_trace_ending(ending))
            await rec.watchdog.stop()
            self._admission.release(rec.run_id)
            self._lifecycle.ended(rec.run_id, stored)
            metrics.RUNS_ACTIVE.dec()
            metrics.RUNS_FINISHED.labels(wire.state_name(rec.state).removeprefix("RUN_STATE_").lower()).inc()

    async def _note_stretch(self, rec: RunRecorder, stretch: StretchTrace) -> None:
        """Store this stretch's traceparent with the run, so that whoever drives it next links to this stretch.

        Telemetry, not the run's data: a store that does not answer in time leaves the next stretch unlinked.
        """
        if stretch.traceparent is None or self._store is None:
            return
        try:
            async with asyncio.timeout(TRACE_NOTE_SECONDS):
                await self._store.note_trace_stretch(rec.run_id, rec.channel.epoch, stretch.traceparent)
        except Exception as exc:  # noqa: BLE001 - a trace link is never worth a run
            log.warning("trace_stretch_not_stored", error=type(exc).__name__)

    async def _ending(
        self, run_id: str, pipeline: Pipeline, deadline: float, first: Coroutine[Any, Any, None]
    ) -> Ending:
        """How the run ends: the pipeline's result, its error, its deadline, or the stop asked for.

        `first` is awaited before the pipeline, under the same stops (a cancel meanwhile ends the run as cancelled).
        """
        try:
            async with asyncio.timeout_at(deadline) as timeout:
                await first
                return Completed(await pipeline.run())
        except AwaitingApproval as waiting:
            return Waiting(waiting.gate)
        except Rejected as rejected:
            return Cancel(rejected.reason)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # handled here: the run goes on to record its ending
            return self._lifecycle.why(run_id)
        except TimeoutError as exc:
            if timeout.expired():
                limit = self._settings.run_timeout
                return Failed(
                    RunDeadlineExceeded(
                        f"the run took longer than the server's limit of {limit:g} s (FACILITAIR_RUN_TIMEOUT)"
                    )
                )
            return Failed(exc)
        except Exception as exc:  # noqa: BLE001 - whatever the pipeline raises, the run still ends exactly once
            return Failed(exc)

    def _record(self, rec: RunRecorder, ending: Ending) -> None:
        if isinstance(ending, Completed):
            rec.completed(ending.outcome, time.time() - rec.created_at)
        elif isinstance(ending, Cancel):
            rec.cancelled(ending.reason)
        elif isinstance(ending, Interrupt):
            rec.interrupted()
        elif isinstance(ending, Failed):
            self.fail(rec, ending.error)

    def fail(self, rec: RunRecorder, error: BaseException) -> None:
        """Record a run_failed for `error`; an unexpected error is logged with its traceback, never sent."""
        if isinstance(error, FacilitairError):
            message, reason, retryable = error.public_message, error.reason.value, error.retryable
        else:
            log.error("run_crashed", exc_info=error)
            message, reason, retryable = "internal error; the server log has the details", "INTERNAL", False
        rec.failed(self._status_number(error), reason, message, retryable=retryable)


_ENDING_NAMES: dict[type, str] = {
    Completed: "completed", Failed: "failed", Cancel: "cancelled", Interrupt: "interrupted", Lost: "lost"
}


def _trace_ending(ending: Ending | None) -> tuple[str, str | None]:
    """How a stretch ended, for its span: the ending's name and, for a failure, the error.type."""
    if ending is None:
        return "crashed", "internal"
    name = _ENDING_NAMES.get(type(ending), "unknown")
    if isinstance(ending, Failed):
        error = ending.error
        return name, error.reason.value if isinstance(error, FacilitairError) else type(error).__qualname__
    return name, None
