"""Approval gates in the pipeline: a stage whose output waits for a person, and what each decision does to it.

A gated stage that completes opens a gate (approval_requested, committed with its stage_completed and checkpoint)
and the run stops there, raising AwaitingApproval: the supervisor records that ending, which hands the run's lease
over without a terminal event. Once the gate is decided (or expires), whichever replica claims the run replays it
from its checkpoints, and the same control flow meets the same gate with its decision (`Pipeline(decisions=...)`):
APPROVE goes on, EDIT makes the person's text or files the stage's output, REVISE runs the stage again with the
person's comment (a new stage number, gated again), REJECT ends the run cancelled. Decisions are read from the
store on every resume, so a gate decided long ago is applied again the same way on a later replay, and its
approval_decided event is said only once: when the gate is still the run's pending one.
"""

from __future__ import annotations

from facilitair.server.domain import AgentRole, ApprovalDecision, ArtifactKind, Decision, Gate

# Kinds of files each gated agent produces, which an EDIT may replace.
EDITED_KIND = {
    AgentRole.ARCHITECT: ArtifactKind.DESIGN,
    AgentRole.CODER: ArtifactKind.CODE,
    AgentRole.REFINER: ArtifactKind.CODE,
    AgentRole.TESTER: ArtifactKind.TEST,
}


class AwaitingApproval(Exception):
    """The run stops at this gate until a person (or the gate's timeout) decides."""

    def __init__(self, gate: Gate) -> None:
        super().__init__(f"waiting at approval {gate.approval_id} after stage {gate.stage}")
        self.gate = gate


class Rejected(Exception):
    """A gate was rejected: the run ends with run_cancelled and this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def rejection_reason(decision: Decision, role: AgentRole) -> str:
    """What run_cancelled says of a rejected gate: who rejected which stage, and why."""
    if decision.timed_out:
        who = "nobody decided before the approval timed out (on_approval_timeout=REJECT)"
    else:
        who = f"rejected by {decision.principal}"
    why = f": {decision.comment}" if decision.comment and not decision.timed_out else ""
    return f"the {role.label}'s output (stage {decision.stage}) was {who}{why}"


def is_final(decision: Decision) -> bool:
    """True when the decision lets the run go on past its gate (APPROVE, EDIT), False for REVISE and REJECT."""
    return decision.decision in (ApprovalDecision.APPROVE, ApprovalDecision.EDIT)
