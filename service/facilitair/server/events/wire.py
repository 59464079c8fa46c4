"""Domain values to facilitair.v1 messages: the one module that builds the messages the server emits.

Every run event (the recorder's, and the coalesced token events of relay.py), every run summary (as stored
with the run and as answered), and every response of the service is built here, from domain values
(domain.py). The rest of the server handles the messages it gets from here as values: runs/, pipeline/,
providers/ and store/ never import the stubs (an import-linter contract in pyproject.toml); events/ holds
RunEvents and transport/ reads requests (transport/requests.py). The names re-exported below are for type
annotations there.

The token event is the hot path: `token_delta` makes it and sets its delta in place, nothing more (the recorder
saves a call of its own in exchange: RunRecorder.token).
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from facilitair.server.domain import (
    AgentRole,
    Artifact,
    ArtifactKind,
    Decision,
    Gate,
    ModelRef,
    Plan,
    RunOutcome,
    RunState,
    TestRun,
    UsageTotals,
    Verdict,
    chain_text,
)
from facilitair.server.settings import Settings
from facilitair.v1 import orchestrator_pb2 as pb

# The message types other layers hold without building them (annotations only).
RunEvent = pb.RunEvent
RunSummary = pb.RunSummary
RunFailed = pb.RunFailed
ServerInfo = pb.GetServerInfoResponse

# A stored event read back (the same function as the message's own, so replay pays no call of ours per event).
stored_event = pb.RunEvent.FromString

# CollaborateResponse and WatchRunResponse are each one field, `RunEvent event = 1`, so both encode as this tag
# (field 1, length-delimited), the event's length as a varint, then the event's bytes: see `response_frame`.
_EVENT_FIELD_TAG = b"\x0a"
_SHORT_PREFIXES = tuple(_EVENT_FIELD_TAG + bytes((n,)) for n in range(0x80))  # a token event is shorter than 128

# The events that end a run, each setting one of domain.FINISHED_STATES.
TERMINAL_PAYLOADS = frozenset({"run_completed", "run_failed", "run_cancelled"})

_RunEvent = pb.RunEvent
_TokenDelta = pb.TokenDelta
_STORE_KINDS = {"sqlite": pb.STORE_KIND_SQLITE, "postgresql": pb.STORE_KIND_POSTGRESQL}

# -- domain values ------------------------------------------------------------------------------------


def agent(role: AgentRole) -> pb.Agent.ValueType:
    """The proto enum value of an agent role."""
    return pb.Agent.ValueType(int(role))


def usage(totals: UsageTotals) -> pb.Usage:
    """Usage as its message."""
    return pb.Usage(
        input_tokens=totals.input_tokens,
        output_tokens=totals.output_tokens,
        cost_usd=totals.cost_usd,
        cost_unknown=totals.cost_unknown,
        cache_read_input_tokens=totals.cache_read_tokens,
        cache_write_input_tokens=totals.cache_write_tokens,
        estimated=totals.estimated,
    )


def plan(value: Plan) -> pb.Plan:
    """A plan as its message; unknown costs stay unset."""
    message = pb.Plan(
        max_refinements=value.max_refinements,
        estimated_seconds=value.estimated_seconds,
        history_stages=value.history_stages,
    )
    for stage in value.stages:
        if stage.test_run_in is not None:
            message.stages.add(test_run=True, sandbox=stage.test_run_in, estimated_seconds=stage.estimated_seconds)
            continue
        planned = message.stages.add(
            agent=agent(stage.role), model=str(stage.model), estimated_seconds=stage.estimated_seconds
        )
        if stage.estimated_cost_usd is not None:
            planned.estimated_cost_usd = stage.estimated_cost_usd
    if value.estimated_cost_usd is not None:
        message.estimated_cost_usd = value.estimated_cost_usd
    if value.max_estimated_cost_usd is not None:
        message.max_estimated_cost_usd = value.max_estimated_cost_usd
    return message


def artifact(value: Artifact) -> pb.Artifact:
    """A produced file as its message."""
    return pb.Artifact(
        path=value.path,
        kind=pb.ArtifactKind.ValueType(int(value.kind)),
        content=value.content,
        stage=value.stage,
        version=value.version,
        requested_path=value.requested_path,
    )


def verdict(stage: int, round_: int, value: Verdict) -> pb.ReviewVerdict:
    """A reviewer's verdict as its message."""
    return pb.ReviewVerdict(
        stage=stage,
        approved=value.approved,
        summary=value.summary,
        well_formed=value.well_formed,
        round=round_,
        issues=[pb.ReviewIssue(severity=i.severity, file=i.file, description=i.description) for i in value.issues],
    )


def tests_started(stage: int, round_: int, files: list[str], sandbox: str) -> pb.RunEvent:
    """The Test run step's start."""
    started = pb.TestsStarted(stage=stage, round=round_, files=files, sandbox=sandbox, command="python -m pytest")
    return pb.RunEvent(tests_started=started)


def tests_output(stage: int, line: str) -> pb.RunEvent:
    """A line the tests printed."""
    return pb.RunEvent(tests_output=pb.TestsOutput(stage=stage, line=line))


def tests_finished_event(run: TestRun) -> pb.RunEvent:
    """The Test run step's end, as its event."""
    return pb.RunEvent(tests_finished=tests_finished(run))


def tests_finished(run: TestRun) -> pb.TestsFinished:
    """The Test run step's results."""
    report = run.report
    message = pb.TestsFinished(
        stage=run.stage,
        round=run.round,
        executed=report.executed,
        not_run_reason=report.not_run_reason,
        tests_passed=report.ok,
        passed=report.passed,
        failed=report.failed,
        errors=report.errors,
        skipped=report.skipped,
        failures=[pb.TestFailure(name=f.name, message=f.message, excerpt=f.excerpt) for f in report.failures],
        timed_out=report.timed_out,
        truncated=report.truncated,
        stopped=report.stopped,
    )
    message.duration.FromNanoseconds(int(report.seconds * 1e9))
    return message


def result(outcome: RunOutcome) -> pb.RunResult:
    """A completed run's result as its message."""
    message = pb.RunResult(
        artifacts=[artifact(a) for a in outcome.artifacts], approved=outcome.approved, refinements=outcome.refinements
    )
    if outcome.tests is not None:
        message.tests_passed = outcome.tests.report.ok
        message.tests.CopyFrom(tests_finished(outcome.tests))
    return message


def state_name(state: int) -> str:
    """The enum name of a run state ("RUN_STATE_COMPLETED"), as logs show it."""
    return pb.RunState.Name(pb.RunState.ValueType(state))


# -- run events (the recorder stamps each with its run, time and seq) ---------------------------------


def token_delta(stage: int, text: str) -> pb.RunEvent:
    """A text delta, exactly as the provider streamed it (the hot path).

    The delta's fields are set in the event's own: constructing a TokenDelta and passing it in copies it, which made
    this 2.4 us where it is 1.3 (with the recorder's run_id and time; issue 26).
    """
    event = _RunEvent()
    delta = event.token_delta
    delta.stage = stage
    delta.text = text
    return event


def joined_tokens(first: pb.RunEvent, last: pb.RunEvent, text: str) -> pb.RunEvent:
    """One token_delta for the run of deltas from `first` to `last` whose texts joined are `text` (relay.py)."""
    return _RunEvent(
        run_id=first.run_id,
        seq=last.seq,
        first_seq=first.seq,
        time=last.time,
        token_delta=_TokenDelta(stage=first.token_delta.stage, text=text),
    )


def run_started(task: str, planned: pb.Plan) -> pb.RunEvent:
    """The run's plan; it is running."""
    return pb.RunEvent(run_started=pb.RunStarted(task=task, plan=planned))


def stage_started(stage: int, role: AgentRole, model: ModelRef, round_: int) -> pb.RunEvent:
    """A stage starts with its first model."""
    started = pb.StageStarted(stage=stage, agent=agent(role), model=str(model), round=round_, attempt=1)
    return pb.RunEvent(stage_started=started)


def attempt_reset(stage: int, attempt: int, reason: str, model: ModelRef, delay: float) -> pb.RunEvent:
    """The stage's text so far is void; attempt `attempt` starts after `delay` seconds."""
    reset = pb.AttemptReset(stage=stage, attempt=attempt, reason=reason, model=str(model))
    reset.delay.FromNanoseconds(int(delay * 1e9))
    return pb.RunEvent(attempt_reset=reset)


def model_fallback(stage: int, from_model: ModelRef, to_model: ModelRef, reason: str) -> pb.RunEvent:
    """The stage gives up on one model and asks the next of its list."""
    fallback = pb.ModelFallback(stage=stage, from_model=str(from_model), to_model=str(to_model), reason=reason)
    return pb.RunEvent(model_fallback=fallback)


def cache_hit(stage: int, model: ModelRef, source_run_id: str, source_stage: int, saved: UsageTotals) -> pb.RunEvent:
    """A stage answered from the response cache: where the answer comes from and what it saves."""
    hit = pb.CacheHit(
        stage=stage, model=str(model), source_run_id=source_run_id, source_stage=source_stage, saved=usage(saved)
    )
    return pb.RunEvent(cache_hit=hit)


def artifact_produced(value: Artifact) -> pb.RunEvent:
    """A file a stage produced."""
    return pb.RunEvent(artifact_produced=pb.ArtifactProduced(artifact=artifact(value)))


def review_verdict(stage: int, round_: int, value: Verdict) -> pb.RunEvent:
    """The reviewer's verdict."""
    return pb.RunEvent(review_verdict=verdict(stage, round_, value))


def stage_completed(
    stage: int, role: AgentRole, model: ModelRef, spent: UsageTotals, *, finish: str, truncated: bool, seconds: float
) -> pb.RunEvent:
    """A stage ended after `seconds`, with its usage and how it finished."""
    done = pb.StageCompleted(
        stage=stage, agent=agent(role), model=str(model), usage=usage(spent), finish_reason=finish, truncated=truncated
    )
    done.duration.FromNanoseconds(int(seconds * 1e9))
    return pb.RunEvent(stage_completed=done)


def run_completed(outcome: pb.RunResult, totals: UsageTotals, duration_s: float) -> pb.RunEvent:
    """Terminal: the run finished with a result."""
    event = pb.RunEvent(run_completed=pb.RunCompleted(result=outcome, usage=usage(totals)))
    event.run_completed.duration.FromNanoseconds(int(duration_s * 1e9))
    return event


def run_failure(
    code: int, reason: str, message: str, *, retryable: bool, stage: int, totals: UsageTotals
) -> pb.RunFailed:
    """Why a run failed, for its terminal event and its summary alike."""
    return pb.RunFailed(
        code=code, reason=reason, message=message, retryable=retryable, stage=stage, usage=usage(totals)
    )


def run_failed(failure: pb.RunFailed) -> pb.RunEvent:
    """Terminal: the run ended with an error."""
    return pb.RunEvent(run_failed=failure)


def run_cancelled(reason: str, totals: UsageTotals) -> pb.RunEvent:
    """Terminal: the run was cancelled."""
    return pb.RunEvent(run_cancelled=pb.RunCancelled(reason=reason, usage=usage(totals)))


def thinking(stage: int, waited: float) -> pb.RunEvent:
    """The model of `stage` has not answered for `waited` seconds."""
    return pb.RunEvent(thinking=pb.Thinking(stage=stage, waited_seconds=waited))


def heartbeat(stage: int) -> pb.RunEvent:
    """Nothing else happened for a while; the run is alive."""
    return pb.RunEvent(heartbeat=pb.Heartbeat(stage=stage))


# -- approval gates ----------------------------------------------------------------------------------


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def pending_approval(gate: Gate) -> pb.PendingApproval:
    """An approval gate as its message."""
    return pb.PendingApproval(
        approval_id=gate.approval_id,
        stage=gate.stage,
        agent=agent(gate.role),
        round=gate.round,
        text=gate.text,
        artifacts=[artifact(a) for a in gate.artifacts],
        requested_at=_timestamp(gate.requested_at),
        expires_at=_timestamp(gate.expires_at),
        on_timeout=pb.ON_APPROVAL_TIMEOUT_APPROVE if gate.approve_on_timeout else pb.ON_APPROVAL_TIMEOUT_REJECT,
        revisions=gate.revisions,
    )


def artifact_of(message: pb.Artifact) -> Artifact:
    """A file back from its message."""
    return Artifact(
        message.path, ArtifactKind(message.kind), message.content, message.stage, message.version,
        message.requested_path,
    )  # fmt: skip


def pending_gate(stored_summary: bytes) -> Gate | None:
    """The gate a stored summary says the run waits at, or None."""
    summary = pb.RunSummary.FromString(stored_summary)
    return gate_of(summary.pending_approval) if summary.HasField("pending_approval") else None


def gate_of(message: pb.PendingApproval) -> Gate:
    """A stored gate back from its message."""
    return Gate(
        approval_id=message.approval_id,
        stage=message.stage,
        role=AgentRole(message.agent),
        round=message.round,
        text=message.text,
        artifacts=[artifact_of(a) for a in message.artifacts],
        requested_at=message.requested_at.ToNanoseconds() / 1e9,
        expires_at=message.expires_at.ToNanoseconds() / 1e9,
        approve_on_timeout=message.on_timeout == pb.ON_APPROVAL_TIMEOUT_APPROVE,
        revisions=message.revisions,
    )


def approval_decided(decision: Decision) -> pb.ApprovalDecided:
    """A gate's recorded decision as its message."""
    return pb.ApprovalDecided(
        approval_id=decision.approval_id,
        stage=decision.stage,
        agent=agent(decision.role),
        decision=pb.ApprovalDecision.ValueType(int(decision.decision)),
        principal=decision.principal,
        comment=decision.comment,
        edited=decision.edited,
        timed_out=decision.timed_out,
        decided_at=_timestamp(decision.decided_at),
    )


def approval_requested(gate: pb.PendingApproval) -> pb.RunEvent:
    """The run waits at a gate (the summary's pending approval, the same message)."""
    return pb.RunEvent(approval_requested=pb.ApprovalRequested(approval=gate))


def approval_decided_event(decision: Decision) -> pb.RunEvent:
    """The gate the run waited at was decided."""
    return pb.RunEvent(approval_decided=approval_decided(decision))


def decision_name(decision: int) -> str:
    """The enum name of a decision ("APPROVAL_DECISION_APPROVE"), as errors and logs show it."""
    return pb.ApprovalDecision.Name(pb.ApprovalDecision.ValueType(decision))


# -- summaries -----------------------------------------------------------------------------------------


def new_summary(run_id: str, task: str, created_ns: int) -> bytes:
    """The stored summary of a run just accepted (queued)."""
    summary = pb.RunSummary(run_id=run_id, state=pb.RunState.ValueType(RunState.QUEUED), task=task)
    summary.created_at.FromNanoseconds(created_ns)
    summary.updated_at.FromNanoseconds(created_ns)
    return summary.SerializeToString()


def summary_of(stored: bytes, last_seq: int, *, with_result: bool, replica_id: str = "") -> pb.RunSummary:
    """A stored summary with its live progress and driving replica; the result only when asked for (GetRun, not
    ListRuns)."""
    summary = pb.RunSummary.FromString(stored)
    summary.last_seq = last_seq
    if replica_id:
        summary.replica_id = replica_id
    if not with_result:
        summary.ClearField("result")
    return summary


class Summary:
    """A run's summary as the recorder keeps it in step with the run's events; stored as bytes in the run's row.

    Reading a stored one raises google.protobuf.message.DecodeError when it cannot be read.
    """

    __slots__ = ("_message",)

    def __init__(self, stored: bytes) -> None:
        self._message = pb.RunSummary.FromString(stored)

    @property
    def state(self) -> int:
        """The run's state as recorded (a domain.RunState number)."""
        return int(self._message.state)

    @property
    def current_stage(self) -> int:
        """The stage running now (0 when none is)."""
        return int(self._message.current_stage)

    def usage(self) -> UsageTotals:
        """The run's usage as stored."""
        stored = self._message.usage
        return UsageTotals(
            stored.input_tokens,
            stored.output_tokens,
            stored.cost_usd,
            stored.cost_unknown,
            stored.cache_read_input_tokens,
            stored.cache_write_input_tokens,
            stored.estimated,
        )

    def planned(self, planned: pb.Plan) -> None:
        """The run's plan."""
        self._message.plan.CopyFrom(planned)

    def stage(self, stage: int, role: AgentRole | None) -> None:
        """The stage (and its agent; None for a Test run step, which is no agent's) running now."""
        self._message.current_stage = stage
        self._message.current_agent = agent(role) if role is not None else pb.AGENT_UNSPECIFIED

    def counted(self, totals: UsageTotals) -> None:
        """The run's usage so far."""
        self._message.usage.CopyFrom(usage(totals))

    def completed(self, outcome: pb.RunResult) -> None:
        """The result of a completed run."""
        self._message.result.CopyFrom(outcome)

    def failed(self, failure: pb.RunFailed) -> None:
        """Why the run failed."""
        self._message.failure.CopyFrom(failure)

    def wait_at(self, gate: Gate) -> pb.PendingApproval:
        """The gate the run waits at now, as its message (which the approval_requested event carries too)."""
        self._message.pending_approval.CopyFrom(pending_approval(gate))
        return self._message.pending_approval

    @property
    def gate(self) -> Gate | None:
        """The gate the run waits at (or waited at, its decision not yet said), or None."""
        if not self._message.HasField("pending_approval"):
            return None
        return gate_of(self._message.pending_approval)

    def gate_decided(self) -> None:
        """The run waits at no gate any more."""
        self._message.ClearField("pending_approval")

    def set_state(self, state: RunState, finished_ns: int | None = None) -> None:
        """The run's new state; a finished run (`finished_ns`) runs no stage any more and waits at no gate."""
        self._message.state = pb.RunState.ValueType(state)
        if finished_ns is not None:
            self._message.ClearField("pending_approval")
            self._message.current_stage = 0
            self._message.current_agent = pb.AGENT_UNSPECIFIED
            self._message.finished_at.FromNanoseconds(finished_ns)

    @property
    def message(self) -> pb.RunSummary:
        """The summary as its message, to read (a terminal event's webhook body is made from it)."""
        return self._message

    def stored(self, updated_ns: int) -> bytes:
        """The summary to store, updated at `updated_ns`."""
        self._message.updated_at.FromNanoseconds(updated_ns)
        return self._message.SerializeToString()


# -- responses -----------------------------------------------------------------------------------------


def response_frame(stored: bytes) -> bytes:
    """The wire bytes of a CollaborateResponse and of a WatchRunResponse (the same bytes) carrying the event
    serialised as `stored`: made once per event as it commits and sent as they are to every watcher, where
    wrapping the event in a response message (which copies it) and serialising that cost each watcher ~6 us.
    """
    n = len(stored)
    if n < 0x80:
        return _SHORT_PREFIXES[n] + stored
    length = bytearray()
    while n >= 0x80:
        length.append((n & 0x7F) | 0x80)
        n >>= 7
    length.append(n)
    return _EVENT_FIELD_TAG + bytes(length) + stored


def collaborate_response(event: pb.RunEvent) -> pb.CollaborateResponse:
    """One message of a Collaborate stream."""
    return pb.CollaborateResponse(event=event)


def watch_response(event: pb.RunEvent) -> pb.WatchRunResponse:
    """One message of a WatchRun stream."""
    return pb.WatchRunResponse(event=event)


def get_run_response(run: pb.RunSummary) -> pb.GetRunResponse:
    """GetRun's answer."""
    return pb.GetRunResponse(run=run)


def list_runs_response(runs: list[pb.RunSummary], next_page_token: str) -> pb.ListRunsResponse:
    """ListRuns' answer: one page."""
    return pb.ListRunsResponse(runs=runs, next_page_token=next_page_token)


def cancel_run_response(run: pb.RunSummary) -> pb.CancelRunResponse:
    """CancelRun's answer."""
    return pb.CancelRunResponse(run=run)


def submit_approval_response(decision: Decision, run: pb.RunSummary) -> pb.SubmitApprovalResponse:
    """SubmitApproval's answer: the gate's recorded decision and the run as it is now."""
    return pb.SubmitApprovalResponse(decided=approval_decided(decision), run=run)


def server_info(
    settings: Settings,
    *,
    version: str,
    providers: list[str],
    agent_models: dict[str, str],
    max_refinements_limit: int,
    store_kind: str,
    replica_id: str,
    sandbox_available: bool = False,
    sandbox_detail: str = "",
) -> pb.GetServerInfoResponse:
    """GetServerInfo's answer: the version, providers, models, the settings' limits, the store, the replica, and
    where tests run (the configured sandbox, whether its probe found it working, what runs them or why not)."""
    s = settings
    # Each default next to its limit.
    limits = pb.ServerLimits(
        max_runs=s.max_runs, max_runs_per_principal=s.max_runs_per_principal, runs_per_minute=s.runs_per_minute,
        max_cost_usd_default=s.budget_usd, max_cost_usd_limit=s.budget_usd_max,
        max_tokens_default=s.budget_tokens, max_tokens_limit=s.budget_tokens_max,
        max_refinements_default=s.max_refinements, max_refinements_limit=max_refinements_limit,
    )  # fmt: skip
    limits.run_timeout.FromNanoseconds(round(s.run_timeout * 1e9))
    return pb.GetServerInfoResponse(
        version=version,
        providers=sorted(providers),
        default_model=chain_text(settings.default_models()),
        agent_models=agent_models,
        limits=limits,
        store=_STORE_KINDS.get(store_kind, pb.STORE_KIND_UNSPECIFIED),
        replica_id=replica_id,
        sandbox=pb.SandboxInfo(kind=settings.sandbox, available=sandbox_available, detail=sandbox_detail),
    )
