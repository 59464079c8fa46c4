"""Domain values to facilitair.v1 messages: the one place the server's events and summaries are built.

The pipeline speaks in domain values (domain.py); the recorder turns them into RunEvents here, and the
run lifecycle builds summaries here, so no other module of the pipeline imports the stubs.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from facilitair.server.domain import (
    AgentRole,
    Artifact,
    ArtifactKind,
    Decision,
    Gate,
    Plan,
    RunOutcome,
    UsageTotals,
    Verdict,
)
from facilitair.v1 import orchestrator_pb2 as pb

# The events that end a run, each setting one of domain.FINISHED_STATES.
TERMINAL_PAYLOADS = frozenset({"run_completed", "run_failed", "run_cancelled"})


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


def result(outcome: RunOutcome) -> pb.RunResult:
    """A completed run's result as its message."""
    return pb.RunResult(
        artifacts=[artifact(a) for a in outcome.artifacts], approved=outcome.approved, refinements=outcome.refinements
    )


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


def decision_name(decision: int) -> str:
    """The enum name of a decision ("APPROVAL_DECISION_APPROVE"), as errors and logs show it."""
    return pb.ApprovalDecision.Name(pb.ApprovalDecision.ValueType(decision))


def new_summary(run_id: str, task: str, created_ns: int) -> pb.RunSummary:
    """The summary of a run just accepted."""
    summary = pb.RunSummary(run_id=run_id, state=pb.RUN_STATE_QUEUED, task=task)
    summary.created_at.FromNanoseconds(created_ns)
    summary.updated_at.FromNanoseconds(created_ns)
    return summary


def summary_of(stored: bytes, last_seq: int, *, with_result: bool) -> pb.RunSummary:
    """A stored summary with its live progress; the result only when asked for (GetRun, not ListRuns)."""
    summary = pb.RunSummary.FromString(stored)
    summary.last_seq = last_seq
    if not with_result:
        summary.ClearField("result")
    return summary


def state_name(state: int) -> str:
    """The enum name of a run state ("RUN_STATE_COMPLETED"), as logs show it."""
    return pb.RunState.Name(pb.RunState.ValueType(state))
