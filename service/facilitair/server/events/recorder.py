"""The run recorder: what the pipeline and the run lifecycle call to say what happened to one run.

Each method takes domain values, has events/wire.py build the event, appends it to the event log and keeps
the run's stored summary row in step (wire.Summary). The silence watchdog (events/watchdog.py) speaks through
it too.
"""

from __future__ import annotations

import dataclasses
import time

from facilitair.server.domain import (
    AgentRole,
    Artifact,
    Decision,
    Gate,
    ModelRef,
    Plan,
    RunOutcome,
    RunState,
    TestRun,
    UsageTotals,
    Verdict,
)
from facilitair.server.events import wire
from facilitair.server.events.channel import RunChannel
from facilitair.server.events.eventlog import EventLog
from facilitair.server.events.watchdog import SilenceWatchdog
from facilitair.server.events.wire import RunEvent, token_delta
from facilitair.server.store.base import Checkpoint, RunRow
from facilitair.server.webhooks.config import RUN_AWAITING_APPROVAL, RUN_CANCELLED, RUN_COMPLETED, RUN_FAILED
from facilitair.server.webhooks.outbox import Outbox


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
        outbox: Outbox | None = None,
        webhook_url: str = "",
    ) -> None:
        self.event_log = log
        self._outbox = outbox
        self._webhook_url = webhook_url  # the run's own webhook URL (CollaborateRequest.webhook_url), if any
        self.channel = channel
        self.run_id = row.run_id
        self.summary = wire.Summary(row.summary)
        self.usage = self.summary.usage()
        self._row = row
        self.watchdog = SilenceWatchdog(
            thinking_interval=thinking_interval,
            heartbeat_interval=heartbeat_interval,
            thinking=self._thinking,
            heartbeat=self._heartbeat,
            name=row.run_id,
        )

    @property
    def created_at(self) -> float:
        """When the run was accepted, epoch seconds."""
        return self._row.created_at

    # -- events ---------------------------------------------------------------------------------

    def _emit(self, event: RunEvent) -> None:
        """Stamp and append an event whose payload is set."""
        event.run_id = self.run_id
        event.time.FromNanoseconds(time.time_ns())
        self.event_log.append(self.channel, event)
        self.watchdog.last_event = time.monotonic()

    def token(self, stage: int, text: str) -> None:
        """A text delta, exactly as the provider streamed it (the hot path: _emit's lines, without its call)."""
        if self.watchdog.waiting_stage:
            self.watchdog.answered()
        event = token_delta(stage, text)
        event.run_id = self.run_id
        event.time.FromNanoseconds(time.time_ns())
        self.event_log.append(self.channel, event)
        self.watchdog.last_event = time.monotonic()

    def run_started(self, task: str, plan: Plan) -> None:
        """The plan; the run is now running."""
        message = wire.plan(plan)
        self.summary.planned(message)
        self._emit(wire.run_started(task, message))
        self._set_state(RunState.RUNNING)

    def stage_started(self, stage: int, role: AgentRole, model: ModelRef, round_: int) -> None:
        """A stage starts with its first model."""
        self.summary.stage(stage, role)
        self._emit(wire.stage_started(stage, role, model, round_))
        self._save()

    def waiting(self, stage: int) -> None:
        """The model of `stage` was asked; thinking events go out until its first token."""
        self.watchdog.waiting(stage)

    def answered(self) -> None:
        """The model answered (or failed): no more thinking events."""
        self.watchdog.answered()

    def attempt_reset(self, stage: int, attempt: int, reason: str, model: ModelRef, delay: float) -> None:
        """The stage's text so far is void; attempt `attempt` starts after `delay` seconds."""
        self._emit(wire.attempt_reset(stage, attempt, reason, model, delay))

    def model_fallback(self, stage: int, from_model: ModelRef, to_model: ModelRef, reason: str) -> None:
        """The stage gives up on one model and asks the next of its list."""
        self._emit(wire.model_fallback(stage, from_model, to_model, reason))

    def cache_hit(self, stage: int, model: ModelRef, source_run_id: str, source_stage: int, saved: UsageTotals) -> None:
        """The stage is answered from the response cache: what the stored answer cost when it was made is saved."""
        self._emit(wire.cache_hit(stage, model, source_run_id, source_stage, saved))

    def artifacts(self, produced: list[Artifact]) -> None:
        """Files a stage produced, one event each."""
        for a in produced:
            self._emit(wire.artifact_produced(a))

    def verdict(self, stage: int, round_: int, value: Verdict) -> None:
        """The reviewer's verdict."""
        self._emit(wire.review_verdict(stage, round_, value))

    def stage_completed(
        self,
        stage: int,
        *,
        role: AgentRole,
        model: ModelRef,
        stage_usage: UsageTotals,
        finish_reason: str,
        truncated: bool,
        seconds: float,
        checkpoint: str,
    ) -> None:
        """A stage ends: its usage counts, and its output is checkpointed in the same commit."""
        self.watchdog.waiting_stage = 0
        self.usage.add(stage_usage)
        self.summary.counted(self.usage)
        completed = wire.stage_completed(
            stage, role, model, stage_usage, finish=finish_reason, truncated=truncated, seconds=seconds
        )
        self._emit(completed)
        self.event_log.checkpoint(Checkpoint(self.run_id, stage, checkpoint))
        self._save()

    def approval_requested(self, gate: Gate) -> None:
        """The run waits at a gate: its event, the summary's pending approval, the row's gate and state commit
        together with the stage's stage_completed and checkpoint, appended just before (no await between), and
        with the run.awaiting_approval webhooks."""
        event = wire.approval_requested(self.summary.wait_at(gate))
        self._emit(event)
        self._row = dataclasses.replace(self._row, approval_id=gate.approval_id, approval_due_at=gate.expires_at)
        self._set_state(RunState.AWAITING_APPROVAL)
        self.webhook(RUN_AWAITING_APPROVAL, event.seq)

    def approval_decided(self, decision: Decision) -> None:
        """The gate the run waited at was decided: said once, and the run is running again."""
        self._emit(wire.approval_decided_event(decision))
        self.summary.gate_decided()
        self._row = dataclasses.replace(self._row, approval_id=None, approval_due_at=None)
        self._set_state(RunState.RUNNING)

    @property
    def pending_gate(self) -> Gate | None:
        """The gate the run waits at (or waited at, its decision not yet said), from the stored summary."""
        return self.summary.gate

    def tests_started(self, stage: int, round_: int, files: list[str], sandbox: str) -> None:
        """The Test run step starts: the stage running now, so a restart here runs the tests again."""
        self.summary.stage(stage, None)
        self._emit(wire.tests_started(stage, round_, files, sandbox))
        self._save()

    def tests_output(self, stage: int, line: str) -> None:
        """A line the tests printed (the sandbox bounds how many and how long)."""
        self._emit(wire.tests_output(stage, line))

    def tests_finished(self, run: TestRun, checkpoint: str) -> None:
        """The Test run step ends; its results are checkpointed in the same commit, so a replay never reruns it."""
        self._emit(wire.tests_finished_event(run))
        self.event_log.checkpoint(Checkpoint(self.run_id, run.stage, checkpoint))
        self._save()

    def cut_off(self, spent: UsageTotals) -> None:
        """What a stage consumed before it was cut off (cancelled, failed, stopped): it counts in the run's usage.

        The terminal event (or, when the server stops, the interrupted state) that follows stores it.
        """
        self.usage.add(spent)
        self.summary.counted(self.usage)

    def completed(self, outcome: RunOutcome, duration_s: float) -> None:
        """Terminal: the run finished with a result."""
        message = wire.result(outcome)
        event = wire.run_completed(message, self.usage, duration_s)
        self.summary.completed(message)
        self._emit(event)
        self._set_state(RunState.COMPLETED, finished=True)
        self.webhook(RUN_COMPLETED, event.seq)

    def failed(self, code: int, reason: str, message: str, *, retryable: bool) -> None:
        """Terminal: the run ended with an error (`code` is the gRPC status number, `reason` the stable reason)."""
        failure = wire.run_failure(
            code, reason, message, retryable=retryable, stage=self.summary.current_stage, totals=self.usage
        )
        self.summary.failed(failure)
        event = wire.run_failed(failure)
        self._emit(event)
        self._set_state(RunState.FAILED, finished=True)
        self.webhook(RUN_FAILED, event.seq, failure)

    def cancelled(self, reason: str) -> None:
        """Terminal: the run was cancelled."""
        event = wire.run_cancelled(reason, self.usage)
        self._emit(event)
        self._set_state(RunState.CANCELLED, finished=True)
        self.webhook(RUN_CANCELLED, event.seq)

    def webhook(self, event_type: str, seq: int, failure: wire.RunFailed | None = None) -> None:
        """Queue the webhooks of the event just appended (seq), in its commit: call with no await in between."""
        if self._outbox is None:
            return
        deliveries = self._outbox.deliveries(
            event_type,
            run_id=self.run_id,
            principal=self._row.principal,
            seq=seq,
            summary=self.summary.message,
            failure=failure,
            request_url=self._webhook_url,
        )
        if deliveries:
            self.event_log.outbox(deliveries)

    def interrupted(self) -> None:
        """The server is stopping mid-run: no terminal event; the run resumes at the next start."""
        self._set_state(RunState.INTERRUPTED)

    def resumed(self) -> None:
        """Driven again after it was interrupted (a stop, a store outage, a replica gone): the run is running.

        No event: the stage that was cut off says so itself when it starts over (attempt_reset).
        """
        if self.summary.state != RunState.RUNNING:
            self._set_state(RunState.RUNNING)

    def _thinking(self, stage: int, waited: float) -> None:
        self._emit(wire.thinking(stage, waited))

    def _heartbeat(self) -> None:
        self._emit(wire.heartbeat(self.summary.current_stage))

    # -- summary ----------------------------------------------------------------------------------

    @property
    def state(self) -> int:
        """The run's state as recorded."""
        return self.summary.state

    @property
    def current_stage(self) -> int:
        """The stage running now (0 when none is)."""
        return self.summary.current_stage

    @property
    def last_seq(self) -> int:
        """The seq of the last event appended (committed or not)."""
        return self.channel.next_seq - 1

    async def durable(self) -> None:
        """Wait until every event appended so far (and the rows and checkpoints queued with them) is committed.

        For stage boundaries, never per token: one wait for the writer's next commit, at once when it is done.
        """
        await self.channel.until_committed(self.last_seq)

    def _set_state(self, state: RunState, *, finished: bool = False) -> None:
        if finished:
            self._row = dataclasses.replace(self._row, approval_id=None, approval_due_at=None)
        self.summary.set_state(state, time.time_ns() if finished else None)
        self._save(finished_at=time.time() if finished else None)

    def _save(self, finished_at: float | None = None) -> None:
        now = time.time()
        self._row = dataclasses.replace(
            self._row,
            state=self.summary.state,
            updated_at=now,
            finished_at=finished_at if finished_at is not None else self._row.finished_at,
            summary=self.summary.stored(int(now * 1e9)),
        )
        self.event_log.update_run(self._row)
