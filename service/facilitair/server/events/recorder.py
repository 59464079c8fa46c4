"""The run recorder: what the pipeline and the run lifecycle call to say what happened to one run.

Each method takes domain values, builds the event (events/wire.py), appends it to the event log and keeps
the run's stored summary row in step. The silence watchdog (events/watchdog.py) speaks through it too.
"""

from __future__ import annotations

import dataclasses
import time

from facilitair.server.domain import AgentRole, Artifact, ModelRef, Plan, RunOutcome, TestRun, UsageTotals, Verdict
from facilitair.server.events import wire
from facilitair.server.events.channel import RunChannel
from facilitair.server.events.eventlog import EventLog
from facilitair.server.events.watchdog import SilenceWatchdog
from facilitair.server.store.base import Checkpoint, RunRow
from facilitair.v1 import orchestrator_pb2 as pb


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
        self.event_log = log
        self.channel = channel
        self.run_id = row.run_id
        self.summary = pb.RunSummary.FromString(row.summary)
        stored = self.summary.usage
        self.usage = UsageTotals(
            stored.input_tokens,
            stored.output_tokens,
            stored.cost_usd,
            stored.cost_unknown,
            stored.cache_read_input_tokens,
            stored.cache_write_input_tokens,
            stored.estimated,
        )
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

    def _emit(self, event: pb.RunEvent) -> None:
        """Stamp and append an event whose payload is set."""
        event.run_id = self.run_id
        event.time.FromNanoseconds(time.time_ns())
        self.event_log.append(self.channel, event)
        self.watchdog.last_event = time.monotonic()

    def token(self, stage: int, text: str) -> None:
        """A text delta, exactly as the provider streamed it (the hot path)."""
        if self.watchdog.waiting_stage:
            self.watchdog.answered()
        self._emit(pb.RunEvent(token_delta=pb.TokenDelta(stage=stage, text=text)))

    def run_started(self, task: str, plan: Plan) -> None:
        """The plan; the run is now running."""
        message = wire.plan(plan)
        self.summary.plan.CopyFrom(message)
        self._emit(pb.RunEvent(run_started=pb.RunStarted(task=task, plan=message)))
        self._set_state(pb.RUN_STATE_RUNNING)

    def stage_started(self, stage: int, role: AgentRole, model: ModelRef, round_: int) -> None:
        """A stage starts with its first model."""
        self.summary.current_stage = stage
        self.summary.current_agent = wire.agent(role)
        started = pb.StageStarted(stage=stage, agent=wire.agent(role), model=str(model), round=round_, attempt=1)
        self._emit(pb.RunEvent(stage_started=started))
        self._save()

    def waiting(self, stage: int) -> None:
        """The model of `stage` was asked; thinking events go out until its first token."""
        self.watchdog.waiting(stage)

    def answered(self) -> None:
        """The model answered (or failed): no more thinking events."""
        self.watchdog.answered()

    def attempt_reset(self, stage: int, attempt: int, reason: str, model: ModelRef, delay: float) -> None:
        """The stage's text so far is void; attempt `attempt` starts after `delay` seconds."""
        reset = pb.AttemptReset(stage=stage, attempt=attempt, reason=reason, model=str(model))
        reset.delay.FromNanoseconds(int(delay * 1e9))
        self._emit(pb.RunEvent(attempt_reset=reset))

    def model_fallback(self, stage: int, from_model: ModelRef, to_model: ModelRef, reason: str) -> None:
        """The stage gives up on one model and asks the next of its list."""
        fallback = pb.ModelFallback(stage=stage, from_model=str(from_model), to_model=str(to_model), reason=reason)
        self._emit(pb.RunEvent(model_fallback=fallback))

    def artifacts(self, produced: list[Artifact]) -> None:
        """Files a stage produced, one event each."""
        for a in produced:
            self._emit(pb.RunEvent(artifact_produced=pb.ArtifactProduced(artifact=wire.artifact(a))))

    def verdict(self, stage: int, round_: int, value: Verdict) -> None:
        """The reviewer's verdict."""
        self._emit(pb.RunEvent(review_verdict=wire.verdict(stage, round_, value)))

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
        self.summary.usage.CopyFrom(wire.usage(self.usage))
        done = pb.StageCompleted(
            stage=stage,
            agent=wire.agent(role),
            model=str(model),
            usage=wire.usage(stage_usage),
            finish_reason=finish_reason,
            truncated=truncated,
        )
        done.duration.FromNanoseconds(int(seconds * 1e9))
        self._emit(pb.RunEvent(stage_completed=done))
        self.event_log.checkpoint(Checkpoint(self.run_id, stage, checkpoint))
        self._save()

    def tests_started(self, stage: int, round_: int, files: list[str], sandbox: str) -> None:
        """The Test run step starts: the stage running now, so a restart here runs the tests again."""
        self.summary.current_stage = stage
        self.summary.current_agent = pb.AGENT_UNSPECIFIED
        self._emit(pb.RunEvent(tests_started=wire.tests_started(stage, round_, files, sandbox)))
        self._save()

    def tests_output(self, stage: int, line: str) -> None:
        """A line the tests printed (the sandbox bounds how many and how long)."""
        self._emit(pb.RunEvent(tests_output=pb.TestsOutput(stage=stage, line=line)))

    def tests_finished(self, run: TestRun, checkpoint: str) -> None:
        """The Test run step ends; its results are checkpointed in the same commit, so a replay never reruns it."""
        self._emit(pb.RunEvent(tests_finished=wire.tests_finished(run)))
        self.event_log.checkpoint(Checkpoint(self.run_id, run.stage, checkpoint))
        self._save()

    def cut_off(self, spent: UsageTotals) -> None:
        """What a stage consumed before it was cut off (cancelled, failed, stopped): it counts in the run's usage.

        The terminal event (or, when the server stops, the interrupted state) that follows stores it.
        """
        self.usage.add(spent)
        self.summary.usage.CopyFrom(wire.usage(self.usage))

    def completed(self, outcome: RunOutcome, duration_s: float) -> None:
        """Terminal: the run finished with a result."""
        message = wire.result(outcome)
        event = pb.RunEvent(run_completed=pb.RunCompleted(result=message, usage=wire.usage(self.usage)))
        event.run_completed.duration.FromNanoseconds(int(duration_s * 1e9))
        self.summary.result.CopyFrom(message)
        self._emit(event)
        self._set_state(pb.RUN_STATE_COMPLETED, finished=True)

    def failed(self, code: int, reason: str, message: str, *, retryable: bool) -> None:
        """Terminal: the run ended with an error (`code` is the gRPC status number, `reason` the stable reason)."""
        failure = pb.RunFailed(
            code=code,
            reason=reason,
            message=message,
            retryable=retryable,
            stage=self.summary.current_stage,
            usage=wire.usage(self.usage),
        )
        self.summary.failure.CopyFrom(failure)
        self._emit(pb.RunEvent(run_failed=failure))
        self._set_state(pb.RUN_STATE_FAILED, finished=True)

    def cancelled(self, reason: str) -> None:
        """Terminal: the run was cancelled."""
        self._emit(pb.RunEvent(run_cancelled=pb.RunCancelled(reason=reason, usage=wire.usage(self.usage))))
        self._set_state(pb.RUN_STATE_CANCELLED, finished=True)

    def interrupted(self) -> None:
        """The server is stopping mid-run: no terminal event; the run resumes at the next start."""
        self._set_state(pb.RUN_STATE_INTERRUPTED)

    def resumed(self) -> None:
        """Driven again after it was interrupted (a stop, a store outage, a replica gone): the run is running.

        No event: the stage that was cut off says so itself when it starts over (attempt_reset).
        """
        if self.summary.state != pb.RUN_STATE_RUNNING:
            self._set_state(pb.RUN_STATE_RUNNING)

    def _thinking(self, stage: int, waited: float) -> None:
        self._emit(pb.RunEvent(thinking=pb.Thinking(stage=stage, waited_seconds=waited)))

    def _heartbeat(self) -> None:
        self._emit(pb.RunEvent(heartbeat=pb.Heartbeat(stage=self.summary.current_stage)))

    # -- summary ----------------------------------------------------------------------------------

    @property
    def state(self) -> int:
        """The run's state as recorded."""
        return int(self.summary.state)

    @property
    def current_stage(self) -> int:
        """The stage running now (0 when none is)."""
        return int(self.summary.current_stage)

    @property
    def last_seq(self) -> int:
        """The seq of the last event appended (committed or not)."""
        return self.channel.next_seq - 1

    async def durable(self) -> None:
        """Wait until every event appended so far (and the rows and checkpoints queued with them) is committed.

        For stage boundaries, never per token: one wait for the writer's next commit, at once when it is done.
        """
        await self.channel.until_committed(self.last_seq)

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
        self._row = dataclasses.replace(
            self._row,
            state=self.summary.state,
            updated_at=now,
            finished_at=finished_at if finished_at is not None else self._row.finished_at,
            summary=self.summary.SerializeToString(),
        )
        self.event_log.update_run(self._row)
