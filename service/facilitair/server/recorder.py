"""The run recorder: what the orchestrator calls to say what happened.

It builds each RunEvent, appends it to the event log, keeps the run's RunSummary row current, and
runs the silence watchdog: `thinking` every `thinking_interval` while a model has not answered,
`heartbeat` after `heartbeat_interval` without any event, so a client is never left in silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from facilitair.server.domain import AgentRole, UsageTotals
from facilitair.server.eventlog import EventLog, RunChannel
from facilitair.server.store.base import Checkpoint, RunRow
from facilitair.v1 import orchestrator_pb2 as pb


def usage_pb(usage: UsageTotals) -> pb.Usage:
    """Usage as its proto."""
    return pb.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=usage.cost_usd,
        cost_unknown=usage.cost_unknown,
        cache_read_input_tokens=usage.cache_read_tokens,
        cache_write_input_tokens=usage.cache_write_tokens,
    )


class RunRecorder:
    """Emits the events of one run and keeps its stored summary in step."""

    def __init__(
        self,
        log: EventLog,
        channel: RunChannel,
        row: RunRow,
        *,
        thinking_interval: float,
        heartbeat_interval: float,
    ) -> None:
        self.log = log
        self.channel = channel
        self.run_id = row.run_id
        self.summary = pb.RunSummary.FromString(row.summary)
        self.usage = UsageTotals(
            self.summary.usage.input_tokens,
            self.summary.usage.output_tokens,
            self.summary.usage.cost_usd,
            self.summary.usage.cost_unknown,
            self.summary.usage.cache_read_input_tokens,
            self.summary.usage.cache_write_input_tokens,
        )
        self._row = row
        self._thinking_interval = thinking_interval
        self._heartbeat_interval = heartbeat_interval
        self._last_event = time.monotonic()
        self._waiting_stage = 0
        self._waiting_since = 0.0
        self._next_thinking = 0.0
        self._rearm = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None

    # -- events ---------------------------------------------------------------------------------

    def emit(self, event: pb.RunEvent) -> None:
        """Stamp and append an event whose payload is set."""
        event.run_id = self.run_id
        event.time.FromNanoseconds(time.time_ns())
        self.log.append(self.channel, event)
        self._last_event = time.monotonic()

    def token(self, stage: int, text: str) -> None:
        """A text delta, exactly as the provider streamed it (the hot path)."""
        if self._waiting_stage:
            self._stop_waiting()
        self.emit(pb.RunEvent(token_delta=pb.TokenDelta(stage=stage, text=text)))

    def run_started(self, task: str, plan: pb.Plan) -> None:
        """The plan; the run is now running."""
        self.summary.plan.CopyFrom(plan)
        self.emit(pb.RunEvent(run_started=pb.RunStarted(task=task, plan=plan)))
        self._set_state(pb.RUN_STATE_RUNNING)

    def stage_started(self, started: pb.StageStarted) -> None:
        """A stage starts: its model is asked, so thinking events begin."""
        self.summary.current_stage = started.stage
        self.summary.current_agent = started.agent
        self.emit(pb.RunEvent(stage_started=started))
        self._save()

    def waiting(self, stage: int) -> None:
        """The model of `stage` was asked; thinking events go out until its first token."""
        now = time.monotonic()
        self._waiting_stage = stage
        self._waiting_since = now
        self._next_thinking = now + self._thinking_interval
        self._rearm.set()

    def answered(self) -> None:
        """The model answered (or failed): no more thinking events."""
        self._stop_waiting()

    def _stop_waiting(self) -> None:
        if self._waiting_stage:
            self._waiting_stage = 0
            # The watchdog sleeps until the next thinking event; a heartbeat may now be due sooner.
            self._rearm.set()

    def stage_completed(self, done: pb.StageCompleted, usage: UsageTotals, checkpoint: str) -> None:
        """A stage ends: its usage counts, and its output is checkpointed in the same commit."""
        self._waiting_stage = 0
        self.usage.add(usage)
        self.summary.usage.CopyFrom(usage_pb(self.usage))
        self.emit(pb.RunEvent(stage_completed=done))
        self.log.checkpoint(Checkpoint(self.run_id, done.stage, checkpoint))
        self._save()

    def completed(self, result: pb.RunResult, duration_s: float) -> None:
        """Terminal: the run finished with a result."""
        event = pb.RunEvent(run_completed=pb.RunCompleted(result=result, usage=usage_pb(self.usage)))
        event.run_completed.duration.FromNanoseconds(int(duration_s * 1e9))
        self.summary.result.CopyFrom(result)
        self.emit(event)
        self._set_state(pb.RUN_STATE_COMPLETED, finished=True)

    def failed(self, code: int, message: str, *, retryable: bool) -> None:
        """Terminal: the run ended with an error."""
        failure = pb.RunFailed(
            code=code,
            message=message,
            retryable=retryable,
            stage=self.summary.current_stage,
            usage=usage_pb(self.usage),
        )
        self.summary.failure.CopyFrom(failure)
        self.emit(pb.RunEvent(run_failed=failure))
        self._set_state(pb.RUN_STATE_FAILED, finished=True)

    def cancelled(self, reason: str) -> None:
        """Terminal: the run was cancelled."""
        self.emit(pb.RunEvent(run_cancelled=pb.RunCancelled(reason=reason, usage=usage_pb(self.usage))))
        self._set_state(pb.RUN_STATE_CANCELLED, finished=True)

    def interrupted(self) -> None:
        """The server is stopping mid-run: no terminal event; the run resumes at the next start."""
        self._set_state(pb.RUN_STATE_INTERRUPTED)

    # -- summary ----------------------------------------------------------------------------------

    def _set_state(self, state: int, *, finished: bool = False) -> None:
        self.summary.state = state  # type: ignore[assignment]
        if finished:
            self.summary.current_stage = 0
            self.summary.current_agent = pb.AGENT_UNSPECIFIED
            self.summary.finished_at.FromNanoseconds(time.time_ns())
        self._save(finished_at=time.time() if finished else None)

    def _save(self, finished_at: float | None = None) -> None:
        now = time.time()
        self.summary.updated_at.FromNanoseconds(int(now * 1e9))
        self._row = RunRow(
            run_id=self._row.run_id,
            principal=self._row.principal,
            client_request_id=self._row.client_request_id,
            state=self.summary.state,
            created_at=self._row.created_at,
            updated_at=now,
            finished_at=finished_at if finished_at is not None else self._row.finished_at,
            summary=self.summary.SerializeToString(),
            spec=self._row.spec,
        )
        self.log.update_run(self._row)

    # -- silence watchdog -----------------------------------------------------------------------

    def start_watchdog(self) -> None:
        """Start sending thinking/heartbeat events when nothing else is said."""
        self._last_event = time.monotonic()
        self._watchdog = asyncio.create_task(self._watch_silence(), name=f"watchdog-{self.run_id}")

    async def stop_watchdog(self) -> None:
        """Stop the watchdog (always, in a finally)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog

    async def _watch_silence(self) -> None:
        # A timer, not synchronisation: sleep until the next moment silence would begin, then look.
        while True:
            now = time.monotonic()
            if self._waiting_stage:
                due = self._next_thinking
                if now >= due:
                    self.emit(
                        pb.RunEvent(
                            thinking=pb.Thinking(
                                stage=self._waiting_stage, waited_seconds=round(now - self._waiting_since, 3)
                            )
                        )
                    )
                    self._next_thinking = now + self._thinking_interval
                    continue
            else:
                due = self._last_event + self._heartbeat_interval
                if now >= due:
                    self.emit(pb.RunEvent(heartbeat=pb.Heartbeat(stage=self.summary.current_stage)))
                    continue
            self._rearm.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that arrives in the same loop
            # iteration as the event is set, and stop_watchdog() would then wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(due - now):
                    await self._rearm.wait()


def stage_agent(role: AgentRole) -> pb.Agent.ValueType:
    """The proto enum value of an agent role."""
    return pb.Agent.ValueType(int(role))
