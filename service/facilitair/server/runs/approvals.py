"""SubmitApproval: a person's decision at a run's approval gate, checked and recorded once.

The store decides which decision is a gate's (`EventStore.decide`, a conditional write under the run's lock):
the first one. A later request gets that recorded decision back when it asks the same (the same
client_request_id, or the same decision), else FAILED_PRECONDITION naming the recorded one. A recorded
decision makes the run claimable: the lease keeper here (and, on a shared store, every replica's) is woken to
claim it, and whoever claims it applies the decision from the run's checkpoints (pipeline/gates.py).

Who may decide: the run's principal, and the approver principals of the keys file (RunQueries); anyone else is
answered as for a run that does not exist.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from facilitair.server.domain import AgentRole, ApprovalDecision, Decision, Gate, RunState
from facilitair.server.errors import FailedPrecondition, InvalidArgument, Reason
from facilitair.server.events import wire
from facilitair.server.pipeline.gates import EDITED_KIND
from facilitair.server.pipeline.spec import RunSpec, UnreadableRecord
from facilitair.server.runs.queries import RunQueries
from facilitair.server.store.base import DecideOutcome, EventStore, RunRow

log = structlog.get_logger(__name__)

MAX_COMMENT_CHARS = 8_000
MAX_REQUEST_ID_CHARS = 128
# An edited design or set of files: large enough for any real one, bounded so one request cannot fill the store.
MAX_EDIT_CHARS = 4_000_000


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """A SubmitApproval request, as the transport read it."""

    run_id: str
    approval_id: str
    decision: ApprovalDecision
    comment: str = ""
    edited_text: str = ""
    edited_files: dict[str, str] = field(default_factory=dict)
    client_request_id: str = ""


class ApprovalDesk:
    """Takes decisions at approval gates: checks who asks and what, records the first, wakes a claimer."""

    def __init__(self, store: EventStore, queries: RunQueries, *, wake: Callable[[], None]) -> None:
        self._store = store
        self._queries = queries
        self._wake = wake  # the lease keeper claims now: the decided run goes on without waiting for its tick

    async def submit(self, request: ApprovalRequest, principal: str) -> tuple[Decision, RunRow]:
        """Record the request's decision (or find the one recorded before); return it with the run as it is now."""
        check_shape(request)
        row = await self._queries.owned(request.run_id, principal)
        gate = _pending(row)
        approval_id = request.approval_id or (gate.approval_id if gate is not None else "")
        if not approval_id:
            # Not waiting now: a request for "the gate" is about its last one, so a late answer is told what was
            # decided there (a person, or the timeout) rather than only that nothing waits.
            decided = await self._store.decisions(row.run_id)
            approval_id = decided[-1].approval_id if decided else ""
        if not approval_id:
            raise FailedPrecondition(
                f"run {row.run_id} is not waiting for an approval (it is {wire.state_name(row.state)})",
                reason=Reason.NOT_AWAITING_APPROVAL,
            )
        if gate is not None and gate.approval_id == approval_id:
            _check_against(request, gate, row)
        decision = Decision(
            approval_id,
            gate.stage if gate is not None else 0,
            gate.role if gate is not None else AgentRole.ARCHITECT,
            request.decision,
            principal,
            request.comment,
            request.edited_text,
            dict(request.edited_files),
            request.client_request_id,
            timed_out=False,
            requested_at=gate.requested_at if gate is not None else 0.0,
            decided_at=time.time(),
        )
        result = await self._store.decide(row.run_id, decision)
        if result.outcome is DecideOutcome.RECORDED:
            log.info("approval_decided", approval_id=approval_id, decision=request.decision.name, principal=principal)
            self._wake()
            return decision, await self._row(row)
        recorded = result.recorded
        if recorded is None:
            raise FailedPrecondition(
                f"run {row.run_id} is not waiting at approval {approval_id!r}"
                + (f"; it waits at {gate.approval_id}" if gate is not None else ""),
                reason=Reason.NOT_AWAITING_APPROVAL,
            )
        if _same(recorded, decision):
            return recorded, await self._row(row)
        raise FailedPrecondition(
            f"approval {approval_id} was already decided: {_describe(recorded)}; "
            f"this {wire.decision_name(request.decision)} is refused",
            reason=Reason.APPROVAL_ALREADY_DECIDED,
        )

    async def _row(self, row: RunRow) -> RunRow:
        return await self._store.get_run(row.run_id) or row


def check_shape(request: ApprovalRequest) -> None:
    """What a request must hold whatever the gate: a decision, bounded texts, a comment to revise with."""
    problems: list[tuple[str, str]] = []
    if request.decision not in tuple(ApprovalDecision):
        problems.append(("decision", "is required: APPROVE, REVISE, EDIT or REJECT"))
    if len(request.comment) > MAX_COMMENT_CHARS:
        problems.append(("comment", f"is {len(request.comment)} characters; the limit is {MAX_COMMENT_CHARS}"))
    if request.decision == ApprovalDecision.REVISE and not request.comment.strip():
        problems.append(("comment", "is required with REVISE: it tells the agent what to change"))
    edits = bool(request.edited_text or request.edited_files)
    if request.decision == ApprovalDecision.EDIT and not edits:
        problems.append(("edited_text", "EDIT needs the edited text or files (edited_text, edited_files)"))
    if request.decision != ApprovalDecision.EDIT and edits:
        problems.append(("edited_text", "edited text and files go only with EDIT"))
    size = len(request.edited_text) + sum(len(p) + len(c) for p, c in request.edited_files.items())
    if size > MAX_EDIT_CHARS:
        problems.append(("edited_files", f"the edit is {size} characters; the limit is {MAX_EDIT_CHARS}"))
    if len(request.client_request_id) > MAX_REQUEST_ID_CHARS:
        problems.append(("client_request_id", f"must be at most {MAX_REQUEST_ID_CHARS} characters"))
    if problems:
        raise InvalidArgument.many(problems)


def _pending(row: RunRow) -> Gate | None:
    """The gate the run waits at now, or None."""
    return wire.pending_gate(row.summary) if row.state == RunState.AWAITING_APPROVAL else None


def _check_against(request: ApprovalRequest, gate: Gate, row: RunRow) -> None:
    """What the pending gate allows: an edit of what its stage produced, a revision within the bound."""
    if request.decision == ApprovalDecision.REVISE:
        try:
            limit = max(RunSpec.from_json(row.spec).max_refinements, 1)
        except UnreadableRecord:
            limit = 1
        if gate.revisions >= limit:
            raise FailedPrecondition(
                f"the {gate.role.label}'s stage was revised {gate.revisions} times at this gate, the most this run "
                "allows (its max_refinements, at least 1): approve, edit or reject it",
            )
    if request.decision != ApprovalDecision.EDIT:
        return
    if gate.role not in EDITED_KIND or gate.role == AgentRole.ARCHITECT:  # a text: the review, the design
        allowed = {"DESIGN.md"} if gate.role == AgentRole.ARCHITECT else set()
        if set(request.edited_files) - allowed:
            raise InvalidArgument("edited_files", f"the {gate.role.label}'s output is a text: send it as edited_text")
        return
    if request.edited_text:
        raise InvalidArgument("edited_text", f"the {gate.role.label}'s output is files: send them as edited_files")
    produced = {a.path for a in gate.artifacts}
    unknown = sorted(set(request.edited_files) - produced)
    if unknown:
        raise InvalidArgument(
            "edited_files",
            f"{', '.join(p[:80] for p in unknown[:3])} {'is' if len(unknown) == 1 else 'are'} not a file this stage "
            f"produced ({', '.join(sorted(produced)) or 'none'})",
        )


def _same(recorded: Decision, asked: Decision) -> bool:
    """Whether a request asks what was recorded: the same key, or the same decision with the same content."""
    if asked.client_request_id and recorded.client_request_id == asked.client_request_id:
        return True
    if recorded.decision != asked.decision or recorded.timed_out:
        return False
    if asked.decision in (ApprovalDecision.APPROVE, ApprovalDecision.REJECT):
        return True
    return (recorded.comment, recorded.edited_text, recorded.edited_files) == (
        asked.comment,
        asked.edited_text,
        asked.edited_files,
    )


def _describe(decision: Decision) -> str:
    who = "its timeout" if decision.timed_out else decision.principal
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(decision.decided_at))
    return f"{wire.decision_name(decision.decision)} by {who} at {when}"
