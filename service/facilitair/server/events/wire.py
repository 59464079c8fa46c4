"""Domain values to facilitair.v1 messages: the one place the server's events and summaries are built.

The pipeline speaks in domain values (domain.py); the recorder turns them into RunEvents here, and the
run lifecycle builds summaries here, so no other module of the pipeline imports the stubs.
"""

from __future__ import annotations

from facilitair.server.domain import (
    AgentRole,
    Artifact,
    Plan,
    RunOutcome,
    TestRun,
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


def tests_started(stage: int, round_: int, files: list[str], sandbox: str) -> pb.TestsStarted:
    """The Test run step's start."""
    return pb.TestsStarted(stage=stage, round=round_, files=files, sandbox=sandbox, command="python -m pytest")


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
